"""Change one pin in a profile file and keep every other byte as it was.

``lock-model --write`` and ``lock-image --write`` must leave a diff a reviewer can read at a
glance: one value changed, formatting and key order untouched. The edit is textual, and it is
proved correct by parsing: exactly one candidate occurrence of the key must yield a document equal
to the original with only that one field changed, else nothing is written.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from detserve.canonical import duplicate_keys
from detserve.errors import ProfileError

_VALUE = r'(null|"(?:[^"\\]|\\.)*")'


def replace_pin(text: str, section: str, key: str, value: str) -> str:
    """Return ``text`` with ``data[section][key]`` set to the string ``value``."""
    try:
        original = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProfileError(f"profile is not valid JSON: {exc}") from exc
    duplicates = duplicate_keys(text)
    if duplicates:
        raise ProfileError(
            f"cannot edit {section}.{key} in place: duplicate key(s) {', '.join(duplicates)}",
            hint="a key given twice is ambiguous; keep one and run the lock again",
        )
    if not isinstance(original, dict) or not isinstance(original.get(section), dict):
        raise ProfileError(f"profile has no object {section!r}")
    expected: dict[str, Any] = copy.deepcopy(original)
    expected[section][key] = value
    pattern = re.compile(rf'"{re.escape(key)}"(\s*:\s*){_VALUE}')
    encoded = json.dumps(value)
    results = []
    for match in pattern.finditer(text):
        candidate = text[: match.start(2)] + encoded + text[match.end(2) :]
        try:
            if json.loads(candidate) == expected:
                results.append(candidate)
        except (ValueError, RecursionError):
            continue
    if len(results) != 1:
        raise ProfileError(
            f"cannot edit {section}.{key} in place: found {len(results)} unambiguous places",
            hint=f"set {section}.{key} by hand to {value!r}",
        )
    return results[0]
