"""What commands detserve has, and each one's summary, known without importing any of them.

``detserve --help`` lists every command with the first paragraph of its docstring. Importing the
command modules to read those docstrings costs more than the rest of the start-up together (the
profile models, the Docker SDK, httpx, huggingface_hub), so the root help is built from this
table instead. A unit test renders the root help both ways and requires the same text, so the
table cannot drift from the commands the full application registers.
"""

from __future__ import annotations

from typing import Final

ROOT_HELP: Final = (
    "Fail-closed, byte-for-byte verifiable vLLM runs in Docker.\n\n"
    "Every mutable input is pinned and verified before a token is sampled: the model "
    "revision (a commit), the runtime image (a registry digest), every snapshot file (a "
    "sha256 manifest), the prompt bundle (a hash) and the sampling parameters (greedy, fixed "
    "seed).\n\nExit codes: 0 ok; 1 verification failed; 2 bad input; 3 environment "
    "(engine, registry, hub, container)."
)

#: (name, summary) in the order the full application lists them: commands, then groups
COMMANDS: Final[tuple[tuple[str, str], ...]] = (
    ("hash", "Hash every file of a snapshot into a sha256 manifest (coreutils format)."),
    ("verify", "Verify every file of a snapshot against its manifest."),
    ("lock-model", "Resolve model.ref (a branch or tag) to a commit with huggingface_hub."),
    ("lock-image", "Resolve runtime.image_tag to its registry digest through the Docker engine."),
    (
        "download",
        "Fetch the model files of the pinned commit into the profile's Hugging Face home.",
    ),
    ("eval-determinism", "Compare run logs byte for byte, and say where they part."),
    (
        "sample",
        "Sample the pinned prompt bundle from the running server, strictly, into a run log.",
    ),
    (
        "replay",
        "Re-run a claimed run log under your own pinned profile and compare, in one step.",
    ),
    (
        "check",
        "Diagnose non-determinism against the running, verified server; write a repro pack.",
    ),
    ("serve", "Serve a verified, OpenAI-compatible gateway in front of the pinned server."),
    ("start", "Start the profile's pinned vLLM container (or find it already running)."),
    ("wait", "Wait until the started server answers with the pinned model name."),
    (
        "smoke",
        "Check the running server serves the pinned model and answers deterministically.",
    ),
    ("stop", "Stop and remove the profile's container."),
    ("run", "Start, wait (verifying the whole snapshot meanwhile) and smoke-test, in one command."),
    ("status", "Show the profile's container, the pins on its labels and its health."),
    ("logs", "Print the container's log lines (stdout and stderr of the server)."),
    ("keygen", "Make a signing key pair for `detserve attest`."),
    ("attest", "Sign a claim about a run log: an in-toto Statement in a DSSE envelope."),
    (
        "verify-claim",
        "Check a signed claim without replaying it: signature, statement, subject, pins.",
    ),
    ("env", "Fingerprint this host and the pinned container: canonical JSON and its sha256."),
    ("doctor", "A determinism checklist for a profile on this host: PASS or FAIL, and the fix."),
    ("fleet", "Replay one claim on several Docker engines at once, and print the agreement table."),
    ("init", "Write an unpinned profile for a model on a device, and print what to run next."),
    ("config", "Validate profiles and print their JSON Schema."),
    ("prompts", "Build and verify pinned prompt bundles."),
    (
        "runlog",
        "Read a run log or gateway transcript: what it claims, and whether it is a valid one.",
    ),
)
