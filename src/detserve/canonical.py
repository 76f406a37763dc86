"""Canonical JSON.

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

import json
from typing import Any, Final

import rfc8785

from detserve.errors import CanonicalJSONError

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
