"""A transcript request as docs/spec/run-log.md section 6.7 defines it; part of the independent
checker (``scripts/spec_check.py``).

Written from the specification, with Python's standard library only: [request.kind],
[request.constraint-text] (a constraint field is one JSON text in its compact form) and
[request.constraint] (the values a constraint field may hold, and their caps). Every failure is a
:class:`RequestRefused` naming the rule; :func:`check_request` returns the request's constraint.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

#: the caps of section 6.7
MAX_SCHEMA_DEPTH: Final = 32
MAX_SCHEMA_NODES: Final = 4096
MAX_REGEX_CHARS: Final = 4096
MAX_GRAMMAR_CHARS: Final = 16384
MAX_CHOICES: Final = 1024
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: section 6.7's escapes of the compact form; other code points below U+0020 are \u00xx
_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n"}
_ESCAPES_MORE: Final = {"\f": "\\f", "\r": "\\r"}
_STRUCTURED: Final = {
    "json": "json_schema",
    "regex": "regex",
    "grammar": "grammar",
    "choice": "choice",
    "json_object": "json_object",
}


class RequestRefused(Exception):
    """A request breaking a rule of section 6.7."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule, self.message = rule, message


class Spelled:
    """A number as the text writes it (the compact form keeps it so)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _finite(text: str) -> Spelled:
    if not math.isfinite(float(text)):
        raise ValueError(f"the number {text[:40]} is beyond a double")
    return Spelled(text)


class _Twice(ValueError):
    pass


def _members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise _Twice(next(name for name in names if names.count(name) > 1))
    return dict(pairs)  # in the text's order


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char in _ESCAPES_MORE:
            out.append(_ESCAPES_MORE[char])
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def compact(value: Any) -> str:
    """Section 6.7's compact form of a value read with its member order and spellings."""
    if isinstance(value, Spelled):
        return value.text
    if isinstance(value, str):
        return _string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(compact(item) for item in value) + "]"
    assert isinstance(value, dict)
    return "{" + ",".join(_string(k) + ":" + compact(v) for k, v in value.items()) + "}"


def _strings(value: Any) -> list[str]:
    found, pending = [], [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            found.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return found


def read_text(text: str, where: str) -> Any:
    """[request.constraint-text], its first two points: the value of one JSON text."""
    try:
        value = json.loads(
            text,
            object_pairs_hook=_members,
            parse_int=Spelled,
            parse_float=_finite,
            parse_constant=_refuse_constant,
        )
    except _Twice as exc:
        raise RequestRefused("request.constraint-text", f"{where}: the name {exc} twice") from None
    except (ValueError, RecursionError) as exc:
        raise RequestRefused("request.constraint-text", f"{where}: not JSON text: {exc}") from None
    for string in _strings(value):
        try:
            string.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestRefused("request.constraint-text", f"{where}: a lone surrogate") from None
    return value


def _shape(value: Any) -> tuple[int, int]:
    """(values, depth) of a JSON value, iteratively: a scalar adds no level."""
    values = depth = 0
    pending = [(value, 1)]
    while pending:
        item, level = pending.pop()
        values += 1
        if isinstance(item, dict | list):
            depth = max(depth, level)
            items = item.values() if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in items)
    return values, depth


def _schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise RequestRefused("request.constraint", f"{where}: a JSON Schema is an object")
    values, depth = _shape(schema)
    if depth > MAX_SCHEMA_DEPTH or values > MAX_SCHEMA_NODES:
        raise RequestRefused(
            "request.constraint", f"{where}: a schema of {values} values, {depth} levels deep"
        )


def _text(value: Any, cap: int, where: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= cap:
        raise RequestRefused("request.constraint", f"{where}: not a string of 1..{cap}")


def _response_format(value: Any, where: str) -> str | None:
    refused = RequestRefused("request.constraint", f"{where}: not a response_format of 6.7")
    if not isinstance(value, dict) or "type" not in value:
        raise refused
    kind = value["type"]
    if kind in ("text", "json_object"):
        if set(value) != {"type"}:
            raise refused
        return None if kind == "text" else "json_object"
    spec = value.get("json_schema")
    if kind != "json_schema" or set(value) != {"type", "json_schema"} or not isinstance(spec, dict):
        raise refused
    name, strict = spec.get("name"), spec.get("strict")
    if (
        not set(spec) <= {"name", "schema", "description", "strict"}
        or "schema" not in spec
        or not isinstance(name, str)
        or not _NAME.fullmatch(name)
        or ("description" in spec and not isinstance(spec["description"], str))
        or not (strict is True or strict is None)
    ):
        raise refused
    _schema(spec["schema"], f"{where}.json_schema.schema")
    return "json_schema"


def _structured_outputs(value: Any, where: str) -> str:
    if not isinstance(value, dict) or len(value) != 1 or not set(value) <= set(_STRUCTURED):
        raise RequestRefused("request.constraint", f"{where}: not one member of 6.7's table")
    ((member, argument),) = value.items()
    at = f"{where}.{member}"
    if member == "json":
        _schema(argument, at)
    elif member == "regex":
        _text(argument, MAX_REGEX_CHARS, at)
    elif member == "grammar":
        _text(argument, MAX_GRAMMAR_CHARS, at)
    elif member == "choice":
        if (
            not isinstance(argument, list)
            or not 1 <= len(argument) <= MAX_CHOICES
            or not all(isinstance(option, str) and option for option in argument)
            or len(set(argument)) != len(argument)
        ):
            raise RequestRefused("request.constraint", f"{at}: not 1..1024 distinct strings")
    elif argument is not True:
        raise RequestRefused("request.constraint", f"{at}: json_object holds true")
    return _STRUCTURED[member]


def check_request(request: dict[str, Any], where: str) -> str | None:
    """Section 6.7's rules; the request's constraint (a kind, or None when it has none)."""
    kind, prompt, messages = request["kind"], request["prompt"], request["messages"]
    chat_ok = kind == "chat" and messages is not None and prompt is None
    completion_ok = kind == "completion" and prompt is not None and messages is None
    if not (chat_ok or completion_ok):
        raise RequestRefused(
            "request.kind",
            f"{where}: a {kind} with prompt {prompt!r:.20} and "
            f"messages {'set' if messages is not None else 'null'}",
        )
    fields = [
        name for name in ("response_format", "structured_outputs") if request[name] is not None
    ]
    if len(fields) > 1:
        raise RequestRefused("request.constraint", f"{where}: both constraint fields are set")
    if not fields:
        return None
    (name,) = fields
    text: str = request[name]
    at = f"{where}: request.{name}"
    value = read_text(text, at)
    if name == "response_format":
        constraint = _response_format(value, at)
    else:
        constraint = _structured_outputs(value, at)
    if compact(value) != text:
        raise RequestRefused("request.constraint-text", f"{at}: not in its compact form")
    return constraint
