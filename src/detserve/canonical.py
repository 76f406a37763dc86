"""Canonical JSON and atomic file writes.

Canonical JSON is what makes two faithful runs byte-identical. It is RFC 8785, the JSON
Canonicalization Scheme (JCS), written by Trail of Bits' ``rfc8785`` package, so that a verifier
in any language re-canonicalises a document with its own JCS library and compares bytes: keys
sorted by their UTF-16 code units, no insignificant white space, UTF-8 (``\\u`` escapes only for
control characters), numbers as ECMAScript writes them (``0.0`` is ``0``, ``1e-05`` is
``0.00001``, ``1e-07`` is ``1e-7``), and one final newline per document (:func:`canonical_bytes`).

JCS numbers are IEEE 754 doubles: an integer is exact only within ±(2**53 - 1)
(:data:`MAX_EXACT_INTEGER`), so every integer a model writes is bounded by it where it is
validated, and a value JCS cannot write is a :class:`CanonicalJSONError`, never a changed number.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

import rfc8785

from detserve.errors import CanonicalJSONError, OutputExistsError

#: The largest integer JCS writes exactly (RFC 8785 section 3.2.2.3, ECMAScript's safe integer).
MAX_EXACT_INTEGER: Final = 2**53 - 1


def canonical_json(value: Any) -> str:
    """Serialise ``value`` as RFC 8785 (JCS), without the final newline."""
    return _jcs(value).decode("utf-8")


def canonical_bytes(value: Any) -> bytes:
    """RFC 8785 (JCS) as UTF-8 bytes with one final newline."""
    return _jcs(value) + b"\n"


def _jcs(value: Any) -> bytes:
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        # Integers beyond ±(2**53 - 1), NaN and infinities, lone surrogates, non-string keys.
        raise CanonicalJSONError(f"not representable as canonical JSON (RFC 8785): {exc}") from exc
    except RecursionError as exc:
        raise CanonicalJSONError("not representable as canonical JSON: nested too deeply") from exc


def duplicate_keys(text: str | bytes) -> list[str]:
    """Keys that occur twice in one object of a JSON document, in order of appearance.

    Parsers disagree on which of two equal keys wins (Python and pydantic take the last), so a
    reviewer reading the first one is not reading what is used. A document that is not JSON has
    none; parsing it properly reports it.
    """
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                found.append(key)
            seen.add(key)
        return dict(items)

    try:
        # Numbers are kept as text: the int() of a 5000-digit literal raises, and values do not
        # matter here.
        json.loads(text, object_pairs_hook=pairs, parse_int=str, parse_float=str)
    except (ValueError, RecursionError):
        return []
    return found


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Write ``path`` all at once or not at all.

    The content goes to a temporary file in the same directory, which is fsynced and renamed over
    ``path`` only when the ``with`` block finishes without an exception. On any exception, Ctrl-C
    included, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(mode)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def refuse_overwrite(path: Path, *, force: bool) -> None:
    """Fail before any work when ``path`` exists and the user did not pass ``--force``."""
    if Path(path).exists() and not force:
        raise OutputExistsError(f"refusing to overwrite {path}", hint="pass --force to replace it")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)
