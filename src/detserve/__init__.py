"""detserve: pinned, replayable, byte-for-byte verifiable vLLM runs.

The library face is :mod:`detserve.api`, re-exported here: ``detserve.verify``,
``detserve.sample``, ``detserve.evaluate``, ``detserve.replay`` and the rest of
``detserve.api.__all__``. They are imported on first use, so that ``import detserve`` (and the
CLI's start-up) stays cheap. Every failure is a :class:`detserve.errors.DetserveError`.

The list of those names is written once, in :mod:`detserve._public`; the imports for type
checkers below name the same ones (``as`` themselves: an explicit re-export), which
tests/unit/test_python_api_doc.py checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from detserve._public import API_NAMES
from detserve._version import __version__

if TYPE_CHECKING:
    from detserve.api import DEFAULT_BUNDLE as DEFAULT_BUNDLE
    from detserve.api import DEFAULT_BUNDLE_PIN as DEFAULT_BUNDLE_PIN
    from detserve.api import DEFAULT_CHECK_LEVELS as DEFAULT_CHECK_LEVELS
    from detserve.api import DEFAULT_GATEWAY_PORT as DEFAULT_GATEWAY_PORT
    from detserve.api import BytesObserver as BytesObserver
    from detserve.api import CheckOutcome as CheckOutcome
    from detserve.api import HashResult as HashResult
    from detserve.api import LockOutcome as LockOutcome
    from detserve.api import ReplayResult as ReplayResult
    from detserve.api import SamplingObserver as SamplingObserver
    from detserve.api import ServeResult as ServeResult
    from detserve.api import TranscriptReplayResult as TranscriptReplayResult
    from detserve.api import bootstrap_prompts as bootstrap_prompts
    from detserve.api import build_gateway as build_gateway
    from detserve.api import check as check
    from detserve.api import check_hash as check_hash
    from detserve.api import compare_runs as compare_runs
    from detserve.api import download_snapshot as download_snapshot
    from detserve.api import evaluate as evaluate
    from detserve.api import explain as explain
    from detserve.api import hash_snapshot as hash_snapshot
    from detserve.api import load_profile as load_profile
    from detserve.api import load_prompts as load_prompts
    from detserve.api import lock_image as lock_image
    from detserve.api import lock_model as lock_model
    from detserve.api import logs as logs
    from detserve.api import plan_download as plan_download
    from detserve.api import replay as replay
    from detserve.api import replay_fleet as replay_fleet
    from detserve.api import replay_transcript as replay_transcript
    from detserve.api import run as run
    from detserve.api import run_cluster as run_cluster
    from detserve.api import sample as sample
    from detserve.api import serve as serve
    from detserve.api import show_run_log as show_run_log
    from detserve.api import show_transcript as show_transcript
    from detserve.api import smoke as smoke
    from detserve.api import start as start
    from detserve.api import status as status
    from detserve.api import status_cluster as status_cluster
    from detserve.api import stop as stop
    from detserve.api import stop_cluster as stop_cluster
    from detserve.api import validate_transcripts as validate_transcripts
    from detserve.api import verify as verify
    from detserve.api import verify_certificate as verify_certificate
    from detserve.api import wait as wait
    from detserve.api import write_json_report as write_json_report
    from detserve.errors import DetserveError as DetserveError

__all__ = [*API_NAMES, "DetserveError", "__version__"]
_API = frozenset(API_NAMES)


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
