"""Validation errors as people read them: one line per bad field, never the file echoed.

Used wherever a pydantic model validates what a person wrote (profiles, prompt bundles,
bundle lines).
"""

from __future__ import annotations

from pydantic import ValidationError

from detserve.errors import bounded


def format_validation_error(exc: ValidationError, *, whole: str = "(profile)") -> list[str]:
    """One line per bad field: the path to the field, what was expected, what was found.

    An error about the whole document (not one field) is labelled ``whole``. What was found is
    shown only for a field of a JSON document, as a bounded excerpt: a file that is not JSON, or
    not an object, is never echoed (it may be a ``.env`` file of tokens given by mistake).
    """
    lines = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or whole
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (refused; check the spelling against `detserve config schema`)"
        elif error["type"] == "missing":
            message = "required field is missing"
        elif error["type"] == "json_invalid" or not error["loc"]:
            pass  # pydantic's message gives the line and column; the input is the whole file
        elif "input" in error and error["type"] not in {"value_error", "assertion_error"}:
            message = f"{message}; found {_excerpt(error['input'])}"
        lines.append(f"{location}: {message}")
    return lines


def _excerpt(value: object) -> str:
    """A found value as an error shows it: scalars cut short, containers by their type only."""
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        return bounded(repr(value), 120)
    return f"a {type(value).__name__}"
