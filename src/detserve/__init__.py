"""detserve: pinned, replayable, byte-for-byte verifiable vLLM runs.

The library face is :mod:`detserve.api`, re-exported here: ``detserve.verify``,
``detserve.sample``, ``detserve.evaluate``, ``detserve.replay`` and the rest of
``detserve.api.__all__``. They are imported on first use, so that ``import detserve`` (and the
CLI's start-up) stays cheap. Every failure is a :class:`detserve.errors.DetserveError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from detserve._version import __version__

if TYPE_CHECKING:
    from detserve.api import (
        DEFAULT_BUNDLE,
        DEFAULT_BUNDLE_PIN,
        DEFAULT_CHECK_LEVELS,
        DEFAULT_GATEWAY_PORT,
        BytesObserver,
        CheckOutcome,
        HashResult,
        LockOutcome,
        ReplayResult,
        SamplingObserver,
        ServeResult,
        TranscriptReplayResult,
        bootstrap_prompts,
        build_gateway,
        check,
        check_hash,
        compare_runs,
        evaluate,
        explain,
        hash_snapshot,
        load_profile,
        load_prompts,
        lock_image,
        lock_model,
        logs,
        read_certificate,
        replay,
        replay_fleet,
        replay_transcript,
        run,
        sample,
        serve,
        show_run_log,
        show_transcript,
        smoke,
        start,
        status,
        stop,
        validate_transcripts,
        verify,
        wait,
        write_json_report,
    )
    from detserve.errors import DetserveError

__all__ = [
    "DEFAULT_BUNDLE",
    "DEFAULT_BUNDLE_PIN",
    "DEFAULT_CHECK_LEVELS",
    "DEFAULT_GATEWAY_PORT",
    "BytesObserver",
    "CheckOutcome",
    "DetserveError",
    "HashResult",
    "LockOutcome",
    "ReplayResult",
    "SamplingObserver",
    "ServeResult",
    "TranscriptReplayResult",
    "__version__",
    "bootstrap_prompts",
    "build_gateway",
    "check",
    "check_hash",
    "compare_runs",
    "evaluate",
    "explain",
    "hash_snapshot",
    "load_profile",
    "load_prompts",
    "lock_image",
    "lock_model",
    "logs",
    "read_certificate",
    "replay",
    "replay_fleet",
    "replay_transcript",
    "run",
    "sample",
    "serve",
    "show_run_log",
    "show_transcript",
    "smoke",
    "start",
    "status",
    "stop",
    "validate_transcripts",
    "verify",
    "wait",
    "write_json_report",
]
_API = frozenset(__all__) - {"DetserveError", "__version__"}


def __getattr__(name: str) -> Any:
    # PEP 562: the API is imported when first asked for, not when detserve is.
    if name in _API:
        from detserve import api

        return getattr(api, name)
    if name == "DetserveError":
        from detserve.errors import DetserveError

        return DetserveError
    raise AttributeError(f"module 'detserve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "DetserveError"])
