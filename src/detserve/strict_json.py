"""The JSON documents of evidence, read strictly: I-JSON (RFC 7493) and nothing else.

An envelope, a sidecar, an environment fingerprint or a certificate's payload is someone else's
file, and a loose reader would believe what a careful person reading it would not: Python's
``json.loads`` of bytes silently accepts UTF-16 and UTF-32 and a byte-order mark, keeps the last
of two values of one key (a reviewer reads the first), and reads ``NaN``, ``Infinity`` and a
number past a double (``1e400``) as a float no JSON can write back.

Invariants: :func:`read_json_document` returns a value only for UTF-8 JSON without a byte-order
mark, a duplicate key, ``NaN``/``Infinity``, a number that overflows a double, a lone surrogate
or nesting past :data:`MAX_DEPTH`; anything else is ``error`` (an
:class:`~detserve.errors.InputError`, exit 2) naming the source, never a changed value.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterator
from typing import Any, Final

from detserve.errors import InputError, bounded

#: How deeply a document may nest (an envelope is 3 levels; a claim's statement about 6).
MAX_DEPTH: Final = 64


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(spelling: str) -> float:
    value = float(spelling)
    if not math.isfinite(value):
        raise ValueError(f"the number {spelling[:40]} overflows a double (not I-JSON)")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen[key] = value
    return seen


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)


def read_json_document(data: bytes, source: str, *, error: type[InputError] = InputError) -> Any:
    """The JSON value of ``data``, read as I-JSON: UTF-8 without a byte-order mark, no duplicate
    key, no ``NaN``/``Infinity`` nor a number past a double, no lone surrogate; ``error`` (exit
    2) naming ``source`` otherwise."""
    shown = bounded(source)
    if data.startswith(codecs.BOM_UTF8):
        raise error(f"{shown}: starts with a byte-order mark; JSON here is UTF-8 without one")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{shown}: not UTF-8 (byte {exc.start}); JSON here is UTF-8, never UTF-16 or UTF-32"
        ) from None
    try:
        value = json.loads(
            text, object_pairs_hook=_unique, parse_float=_finite, parse_constant=_refuse_constant
        )
    except _Duplicate as exc:
        raise error(f"{shown}: duplicate keys {bounded(exc.key, 200)}") from None
    except RecursionError:
        raise error(f"{shown}: not JSON: nested too deeply") from None
    except ValueError as exc:
        raise error(f"{shown}: not JSON: {bounded(str(exc), 300)}") from None
    try:
        for string in _strings(value):
            string.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{shown}: a string holds a lone surrogate (not I-JSON)") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{shown}: not JSON here: {exc}") from None
    return value


def read_json_object(
    data: bytes, source: str, *, error: type[InputError] = InputError
) -> dict[str, Any]:
    """:func:`read_json_document` of a JSON object."""
    document = read_json_document(data, source, error=error)
    if not isinstance(document, dict):
        raise error(f"{bounded(source)}: not a JSON object")
    return document
