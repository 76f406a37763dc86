"""JSON kept as it was spelled: object keys in their order, numbers as written.

A JSON Schema's property order decides the order in which a structured-output engine writes the
fields, and a number's spelling decides its type once parsed (``1`` an integer, ``1.0`` and
``1e2`` floats, each written back differently). Canonical JSON (RFC 8785, :mod:`detserve.
canonical`) sorts keys and respells numbers, so a constraint recorded that way is not what was
sent. This module reads such a value with both kept (:func:`loads`: keys in order, each number a
:class:`Number` holding its spelling) and writes it back compactly in the same order
(:func:`dumps`); a constraint is then carried as that text, a string, which canonical JSON cannot
reorder. :func:`encode_body` writes a request body with such texts embedded as they are
(:class:`JSONText`), so that what is recorded and what is sent are the same bytes.

Invariants: ``dumps(loads(text))`` is ``text`` without its insignificant white space, and with
strings written as ``json.dumps(..., ensure_ascii=False)`` writes them (the same strings, so the
same value for every parser); a repeated key, ``NaN``/``Infinity``, a number that overflows a
double and a lone surrogate (no UTF-8 text can hold one) are :class:`ValueError`, never a changed
value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final


class Number:
    """A JSON number as spelled (``1``, ``1.0``, ``1e2``, ``-0``)."""

    __slots__ = ("spelling",)

    def __init__(self, spelling: str) -> None:
        self.spelling = spelling

    @property
    def is_integer(self) -> bool:
        """Spelled as an integer (no fraction, no exponent)."""
        return not any(mark in self.spelling for mark in ".eE")

    def value(self) -> int | float:
        return int(self.spelling) if self.is_integer else float(self.spelling)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Number) and other.spelling == self.spelling

    def __hash__(self) -> int:
        return hash(self.spelling)

    def __repr__(self) -> str:
        return f"Number({self.spelling!r})"


class JSONText(str):
    """A string that is already JSON text: :func:`encode_body` embeds it as it is."""


def _float(spelling: str) -> Number:
    if not math.isfinite(float(spelling)):
        raise ValueError(f"the number {spelling[:40]} overflows a double")
    return Number(spelling)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key[:80]!r} is repeated in one object")
            seen.add(key)
    return document


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str) -> Any:
    """Parse JSON text: objects as dicts in their key order, numbers as :class:`Number`.

    Raises ``ValueError`` (a repeated key, NaN or infinity, a number beyond a double) and
    ``RecursionError`` (nested past the parser)."""
    return json.loads(
        text,
        object_pairs_hook=_unique,
        parse_int=Number,
        parse_float=_float,
        parse_constant=_constant,
    )


#: what ``json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)`` uses,
#: made once: ``dumps`` with options makes a new encoder for each of a body's keys and scalars
_SCALAR: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _scalar(value: Any) -> str:
    return _SCALAR.encode(value)


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, Number):
        out.append(value.spelling)
    elif isinstance(value, JSONText):
        out.append(value)
    elif isinstance(value, dict):
        out.append("{")
        for position, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise ValueError(f"an object key must be a string, not {type(key).__name__}")
            out.append(("," if position else "") + _scalar(key) + ":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for position, item in enumerate(value):
            if position:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif value is None or isinstance(value, bool | int | float | str):
        out.append(_scalar(value))
    else:
        raise ValueError(f"{type(value).__name__} is not JSON")


def dumps(value: Any) -> str:
    """Compact JSON text of ``value`` in its own key order, numbers as spelled. Raises
    ``ValueError`` for what UTF-8 JSON cannot hold (a lone surrogate, NaN, a non-string key)."""
    out: list[str] = []
    _write(value, out)
    text = "".join(out)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate (a \\ud800-\\udfff escape)") from None
    return text


def encode_body(body: Mapping[str, Any]) -> bytes:
    """A request body's bytes: compact JSON in the body's key order, each :class:`JSONText`
    embedded as it is (the same bytes ``httpx``'s ``json=`` writes for a body without one)."""
    return dumps(dict(body)).encode("utf-8")
