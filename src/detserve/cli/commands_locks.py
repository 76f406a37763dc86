"""Locks, the only commands that create pins: lock-model and lock-image."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from detserve.cli.app import app
from detserve.cli.options import ConfigOption, DockerHostOption, legacy_output_option, renamed
from detserve.cli.output import JsonOption, emit_json, result, say

WriteOption = Annotated[
    bool, typer.Option("--write", help="Write the resolved pin into the profile (one field only).")
]
LockOutputOption = Annotated[
    Path | None,
    typer.Option(
        "--profile-output",
        dir_okay=False,
        help="With --write: write the locked profile here instead of in place.",
    ),
]
LegacyLockOutputOption = Annotated[Path | None, legacy_output_option("--profile-output")]
if TYPE_CHECKING:
    from detserve.api import LockOutcome

ForceOption = Annotated[
    bool, typer.Option("--force", help="Overwrite --profile-output if it exists.")
]


def _show(outcome: LockOutcome, *, json_output: bool) -> None:
    lock, target = outcome.lock, outcome.written
    if json_output:
        emit_json(lock.as_json() | {"written": str(target) if target else None})
        return
    result(f"{lock.source} -> {lock.pinned}")
    if target is not None:
        say(f"trusting {lock.pinned} (resolved by {lock.resolved_by})")
        say(f"wrote {lock.field} to {target}")
        say("review the diff and commit it: this pin is now a trust root")
    elif lock.previous is None:
        say(f"{lock.field} is unpinned; re-run with --write to pin it")


@app.command("lock-model")
def lock_model_command(
    config: ConfigOption,
    write: WriteOption = False,
    profile_output: LockOutputOption = None,
    legacy_output: LegacyLockOutputOption = None,
    force: ForceOption = False,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            help="Hub address, e.g. a mirror (default: HF_ENDPOINT, else huggingface.co).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Resolve model.ref (a branch or tag) to a commit with huggingface_hub.

    Without --write it only prints the commit (and exits 1 if the profile pins another one).
    The hub token, if needed, comes from HF_TOKEN. Example:

        detserve lock-model --config configs/qwen3-8b.json --write
    """
    from detserve import api

    output = renamed(profile_output, legacy_output, name="--profile-output", old="--output")
    outcome = api.lock_model(
        config, write=write, profile_output=output, force=force, endpoint=endpoint
    )
    _show(outcome, json_output=json_output)


@app.command("lock-image")
def lock_image_command(
    config: ConfigOption,
    write: WriteOption = False,
    profile_output: LockOutputOption = None,
    legacy_output: LegacyLockOutputOption = None,
    force: ForceOption = False,
    docker_host: DockerHostOption = None,
    json_output: JsonOption = False,
) -> None:
    """Resolve runtime.image_tag to its registry digest through the Docker engine.

    Without --write it only prints the digest, and exits 1 if the registry now answers a
    different digest than the profile pins. Example:

        detserve lock-image --config configs/tiny-cpu.json --write \\
            --profile-output configs/tiny-cpu.local.json
    """
    from detserve import api

    output = renamed(profile_output, legacy_output, name="--profile-output", old="--output")
    outcome = api.lock_image(
        config, write=write, profile_output=output, force=force, docker_host=docker_host
    )
    _show(outcome, json_output=json_output)
