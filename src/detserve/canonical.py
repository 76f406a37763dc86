"""Canonical JSON.

Canonical JSON is what makes two faithful runs byte-identical: sorted keys, no insignificant
white space, UTF-8 (not ``\\u`` escapes), and one final newline per document.
"""

from __future__ import annotations

import json
from typing import Any


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
