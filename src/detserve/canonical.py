"""Canonical JSON and atomic file writes.

Canonical JSON is what makes two faithful runs byte-identical: sorted keys, no insignificant
white space, UTF-8 (not ``\\u`` escapes), and one final newline per document.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from detserve.errors import OutputExistsError


def canonical_json(value: Any) -> str:
    """Serialise ``value`` canonically, without the final newline."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def canonical_bytes(value: Any) -> bytes:
    """Canonical JSON as UTF-8 bytes with one final newline."""
    return (canonical_json(value) + "\n").encode("utf-8")


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
