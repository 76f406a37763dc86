"""detserve: pinned, replayable, byte-for-byte verifiable vLLM runs.

The library face is :mod:`detserve.api`, re-exported here: ``detserve.verify``,
``detserve.sample``, ``detserve.evaluate``, ``detserve.replay`` and the rest of
``detserve.api.__all__``. They are imported on first use, so that ``import detserve`` (and the
CLI's start-up) stays cheap. Every failure is a :class:`detserve.errors.DetserveError`.

The list of those names is written once, as ``detserve.api.__all__``: type checkers see it
through the star import below (a star import re-exports exactly ``__all__``), and at run time
``__all__``, ``dir()`` and every name are served from it on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from detserve._version import __version__ as __version__

if TYPE_CHECKING:
    from detserve.api import *  # noqa: F403  # the face's __all__, and nothing else
    from detserve.errors import DetserveError as DetserveError

#: what this module defines itself, beside the face's names
_OWN = ("DetserveError", "__version__")


def _api() -> Any:
    # importlib, not ``from detserve import api``: that asks this module for ``api`` first,
    # which would come back here before the submodule is imported
    return importlib.import_module("detserve.api")


def _api_names() -> list[str]:
    return list(_api().__all__)


def __getattr__(name: str) -> Any:
    # PEP 562: the API is imported when first asked for, not when detserve is.
    if name == "__all__":
        return [*_api_names(), *_OWN]
    if name == "DetserveError":
        from detserve.errors import DetserveError

        return DetserveError
    if not name.startswith("_") and name in _api_names():
        return getattr(_api(), name)
    raise AttributeError(f"module 'detserve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_api_names(), *_OWN})
