"""detserve as a library: one typed function per thing a person does with it.

Every function here takes paths (or an already loaded profile), returns a frozen result object
and raises a :class:`~detserve.errors.DetserveError` subclass on failure; its ``exit_code`` is what
the CLI exits with (1 verification failed, 2 bad input, 3 environment). Nothing here prints or
exits: progress reaches the caller through optional observers, and the CLI is a thin layer that
parses options, calls one of these functions and renders the result.

Verification functions raise on any mismatch and never return a bool. A comparison's verdict,
on the other hand, is data: :func:`evaluate` returns the report whatever it says, and
``report.error()`` is the error to raise when it is not a pass (``None`` when it is).

The face is assembled from families of verbs, each a module of thin wrappers over the room that
does the work: :mod:`~detserve.api.profiles`, :mod:`~detserve.api.snapshots`,
:mod:`~detserve.api.container`, :mod:`~detserve.api.claims`, :mod:`~detserve.api.reports`,
:mod:`~detserve.api.gateway` and :mod:`~detserve.api.diagnosis`. The workflows live in their own
rooms, never here. Heavy dependencies (the Docker SDK, httpx, the evaluation layer) are imported
inside the functions that need them, so that ``import detserve.api`` and ``detserve verify`` stay
fast.

Stability (semantic versioning, see the README): the names in ``__all__`` (written once, here;
``detserve/__init__.py`` re-exports the same) and the documented fields of their results are the
public API; everything else in ``detserve`` may change in a minor release.
"""

from __future__ import annotations

from detserve.api._common import load_profile
from detserve.api.claims import (
    DEFAULT_BUNDLE,
    DEFAULT_BUNDLE_PIN,
    attest,
    bootstrap_prompts,
    keygen,
    load_prompts,
    replay,
    replay_evidence,
    replay_fleet,
    sample,
    verify_claim,
)
from detserve.api.container import (
    container_name,
    logs,
    run,
    run_cluster,
    smoke,
    start,
    status,
    status_cluster,
    stop,
    stop_cluster,
    wait,
)
from detserve.api.diagnosis import (
    DEFAULT_CHECK_LEVELS,
    HostOnlyEnvironment,
    check,
    doctor,
    env,
    verify_certificate,
)
from detserve.api.gateway import DEFAULT_GATEWAY_PORT, build_gateway, replay_transcript, serve

# not public (not in __all__): the benchmarks tune it
from detserve.api.gateway import DEFAULT_REVERIFY_INTERVAL_S as DEFAULT_REVERIFY_INTERVAL_S
from detserve.api.profiles import ProfileOptions, config_options, init_profile, profile_json_schema
from detserve.api.reports import (
    Evidence,
    check_hash,
    compare_runs,
    eval_determinism,
    evaluate,
    explain,
    is_transcript,
    read_evidence,
    replay_requirements,
    show_run_log,
    show_transcript,
    validate_transcripts,
    write_json_report,
)
from detserve.api.snapshots import (
    BytesObserver,
    HashResult,
    LockOutcome,
    download_snapshot,
    hash_snapshot,
    lock_image,
    lock_model,
    plan_download,
    verify,
)
from detserve.claim_replay import ReplayResult, TranscriptReplayResult
from detserve.diagnosis.check_run import CheckOutcome
from detserve.gateway.launch import ServeResult
from detserve.sampling_session import SamplingObserver

#: the public names, in the order of the reference (docs/python-api.md)
__all__ = [
    "DEFAULT_BUNDLE",
    "DEFAULT_BUNDLE_PIN",
    "DEFAULT_CHECK_LEVELS",
    "DEFAULT_GATEWAY_PORT",
    "BytesObserver",
    "CheckOutcome",
    "Evidence",
    "HashResult",
    "HostOnlyEnvironment",
    "LockOutcome",
    "ProfileOptions",
    "ReplayResult",
    "SamplingObserver",
    "ServeResult",
    "TranscriptReplayResult",
    "attest",
    "bootstrap_prompts",
    "build_gateway",
    "check",
    "check_hash",
    "compare_runs",
    "config_options",
    "container_name",
    "doctor",
    "download_snapshot",
    "env",
    "eval_determinism",
    "evaluate",
    "explain",
    "hash_snapshot",
    "init_profile",
    "is_transcript",
    "keygen",
    "load_profile",
    "load_prompts",
    "lock_image",
    "lock_model",
    "logs",
    "plan_download",
    "profile_json_schema",
    "read_evidence",
    "replay",
    "replay_evidence",
    "replay_fleet",
    "replay_requirements",
    "replay_transcript",
    "run",
    "run_cluster",
    "sample",
    "serve",
    "show_run_log",
    "show_transcript",
    "smoke",
    "start",
    "status",
    "status_cluster",
    "stop",
    "stop_cluster",
    "validate_transcripts",
    "verify",
    "verify_certificate",
    "verify_claim",
    "wait",
    "write_json_report",
]
