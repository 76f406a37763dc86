"""The names of the public API, written once.

:mod:`detserve.api` takes them as its ``__all__``; ``detserve/__init__.py`` re-exports them on
first use (PEP 562) without importing :mod:`detserve.api`, which would cost every start-up, and
names them for type checkers. The list lives in a module of its own because the package imports
api for type checkers and api may not import the package back (a cycle).
"""

from __future__ import annotations

from typing import Final

#: the public names of :mod:`detserve.api`, in the order of its reference (docs/python-api.md)
API_NAMES: Final = (
    "DEFAULT_BUNDLE",
    "DEFAULT_BUNDLE_PIN",
    "DEFAULT_CHECK_LEVELS",
    "DEFAULT_GATEWAY_PORT",
    "BytesObserver",
    "CheckOutcome",
    "HashResult",
    "LockOutcome",
    "ReplayResult",
    "SamplingObserver",
    "ServeResult",
    "TranscriptReplayResult",
    "bootstrap_prompts",
    "build_gateway",
    "check",
    "check_hash",
    "compare_runs",
    "download_snapshot",
    "evaluate",
    "explain",
    "hash_snapshot",
    "load_profile",
    "load_prompts",
    "lock_image",
    "lock_model",
    "logs",
    "plan_download",
    "replay",
    "replay_fleet",
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
    "wait",
    "write_json_report",
)
