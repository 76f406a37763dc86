"""Structured-output constraints as they are sent: the shapes admitted, their caps, their kind.

A gateway request constrains its output through one field, which is sent to vLLM as the client
wrote it (key order and number spellings kept, :mod:`detserve.spelled_json`) and recorded as that
JSON text:

* ``response_format``, OpenAI's: ``{"type": "json_schema", "json_schema": {"name": ..., "schema":
  {...}}}`` (with ``description`` and ``strict`` optional), ``{"type": "json_object"}``, or
  ``{"type": "text"}`` (no constraint). ``name`` is required, as by OpenAI and vLLM (the official
  client always sends it). vLLM enforces every schema, so ``strict: false`` (a schema the model
  may leave) is refused rather than silently answered with more than was asked;
* ``structured_outputs``, vLLM's: exactly one of ``json`` (a schema object), ``regex``,
  ``choice``, ``grammar`` (Lark syntax, self-contained: detserve checks what it admits) or
  ``json_object`` (``true``), and nothing else: vLLM's other options change the tokens and are
  refused by name.

A prompt bundle's constraint (:class:`detserve.request_kinds.Constraint`) has the same
arguments under the same caps, a schema held as its JSON text. Every cap bounds work before
anything compiles it (detserve's check, and the engine's grammar compiler):
:data:`MAX_CONSTRAINT_CHARS` for the whole field, :data:`MAX_SCHEMA_NODES` and
:data:`MAX_SCHEMA_DEPTH` for a schema,
:data:`MAX_REGEX_CHARS`, :data:`MAX_GRAMMAR_CHARS` and :data:`MAX_CHOICES`. Anything else is a
:class:`ConstraintRefused` naming the field (``param``, dotted: ``response_format.json_schema.
strict``); nothing is dropped or rewritten.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from detserve import spelled_json

ConstraintKind = Literal["choice", "grammar", "json_object", "json_schema", "regex"]
ConstraintField = Literal["response_format", "structured_outputs"]
CONSTRAINT_FIELDS: Final = ("response_format", "structured_outputs")

#: the longest a constraint field's JSON text may be, in characters
MAX_CONSTRAINT_CHARS: Final = 1 << 16
#: the most values (objects, arrays, strings, numbers, ...) a JSON Schema may hold
MAX_SCHEMA_NODES: Final = 4096
#: the deepest a JSON Schema may nest (objects and arrays, counted from 1): the schema libraries
#: recurse, and a schema a few hundred levels deep ran them out of stack
MAX_SCHEMA_DEPTH: Final = 32
MAX_REGEX_CHARS: Final = 4096
MAX_GRAMMAR_CHARS: Final = 16384
MAX_CHOICES: Final = 1024
#: what a ``response_format`` schema's ``name`` may be (matched whole)
SCHEMA_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: the keys ``response_format.json_schema`` may hold (``name`` and ``schema`` required)
JSON_SCHEMA_KEYS: Final = ("name", "description", "schema", "strict")
#: vLLM's ``structured_outputs`` keys, and the constraint each asks for
STRUCTURED_KINDS: Final[dict[str, ConstraintKind]] = {
    "json": "json_schema",
    "regex": "regex",
    "choice": "choice",
    "grammar": "grammar",
    "json_object": "json_object",
}


class ConstraintRefused(ValueError):
    """A constraint that is not admitted: the field (dotted path) and why."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = f"{param}: {message}"


@dataclass(frozen=True)
class SentConstraint:
    """A constraint field as sent: its JSON text, and the one constraint it asks for."""

    field: ConstraintField
    #: the field's value as sent and recorded: compact JSON, keys in order, numbers as spelled
    text: str
    #: None for ``response_format`` ``text``: no constraint
    kind: ConstraintKind | None
    #: a schema's JSON text, a regex, a grammar or the choices; None for ``json_object``
    argument: str | tuple[str, ...] | None
    #: where the argument is, for messages
    param: str


def json_shape(value: Any) -> tuple[int, int]:
    """How many values a JSON value holds and how deep it nests (a scalar 0, ``{}`` and ``[]``
    1), without recursing."""
    nodes = deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        nodes += 1
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return nodes, deepest


def check_schema_value(param: str, schema: Any) -> str:
    """A schema (as :func:`spelled_json.loads` reads it) within the caps; its JSON text."""
    if not isinstance(schema, dict):
        raise ConstraintRefused(param, "a JSON Schema here is an object")
    nodes, depth = json_shape(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise ConstraintRefused(
            param, f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels (MAX_SCHEMA_DEPTH)"
        )
    if nodes > MAX_SCHEMA_NODES:
        raise ConstraintRefused(
            param,
            f"the schema holds {nodes} values; at most {MAX_SCHEMA_NODES} are admitted "
            "(MAX_SCHEMA_NODES)",
        )
    try:
        return spelled_json.dumps(schema)
    except ValueError as exc:
        raise ConstraintRefused(param, str(exc)) from None


def check_schema_text(param: str, text: str) -> str:
    """A schema held as JSON text: it must be its own compact form (one spelling per schema)."""
    if len(text) > MAX_CONSTRAINT_CHARS:
        raise ConstraintRefused(
            param, f"the schema is longer than {MAX_CONSTRAINT_CHARS} characters"
        )
    try:
        value = spelled_json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConstraintRefused(param, f"not JSON text: {exc}") from None
    if check_schema_value(param, value) != text:
        raise ConstraintRefused(
            param, "not in its compact form (no white space; keys and numbers as written)"
        )
    return text


def check_text(param: str, value: Any, cap: int, what: str) -> str:
    """A regex or a grammar: a non-empty string within its cap."""
    if not isinstance(value, str) or not value:
        raise ConstraintRefused(param, f"a {what} is a non-empty string")
    if len(value) > cap:
        raise ConstraintRefused(
            param, f"the {what} is {len(value)} characters; at most {cap} are admitted"
        )
    return value


def check_choices(param: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConstraintRefused(param, "choice is a non-empty list of strings")
    if len(value) > MAX_CHOICES:
        raise ConstraintRefused(
            param, f"{len(value)} choices; at most {MAX_CHOICES} are admitted (MAX_CHOICES)"
        )
    if any(not option for option in value) or len(set(value)) != len(value):
        raise ConstraintRefused(param, "choice options must be distinct, non-empty strings")
    return tuple(value)


def _only(param: str, value: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in value:
        if key not in allowed:
            raise ConstraintRefused(
                f"{param}.{key}", f"not accepted here (strict admission: {', '.join(allowed)})"
            )


def _response_format(value: Any) -> tuple[ConstraintKind | None, Any, str]:
    field = "response_format"
    if not isinstance(value, dict) or "type" not in value:
        raise ConstraintRefused(field, "response_format is an object with a type")
    kind = value["type"]
    if kind in ("text", "json_object"):
        _only(field, value, ("type",))
        return (None if kind == "text" else "json_object"), None, field
    if kind != "json_schema":
        raise ConstraintRefused(
            f"{field}.type",
            "the type is json_schema, json_object or text (nothing else is checked)",
        )
    _only(field, value, ("type", "json_schema"))
    spec = value.get("json_schema")
    where = f"{field}.json_schema"
    if not isinstance(spec, dict):
        raise ConstraintRefused(where, "json_schema is an object with a name and a schema")
    _only(where, spec, JSON_SCHEMA_KEYS)
    if not isinstance(spec.get("name"), str) or not SCHEMA_NAME.fullmatch(spec["name"]):
        raise ConstraintRefused(
            f"{where}.name", "a name of 1 to 64 letters, digits, '_' or '-' is required"
        )
    if "description" in spec and not isinstance(spec["description"], str):
        raise ConstraintRefused(f"{where}.description", "a description is a string")
    strict = spec.get("strict")
    if strict is False:
        raise ConstraintRefused(
            f"{where}.strict",
            "strict: false is refused: vLLM enforces every schema, so what is asked (a schema "
            "the output may leave) cannot be honoured; send true or leave it out",
        )
    if "strict" in spec and strict is not True and strict is not None:
        raise ConstraintRefused(f"{where}.strict", "strict is a boolean")
    if "schema" not in spec:
        raise ConstraintRefused(f"{where}.schema", "a schema is required")
    return "json_schema", spec["schema"], f"{where}.schema"


def _structured_outputs(value: Any) -> tuple[ConstraintKind | None, Any, str]:
    field = "structured_outputs"
    if not isinstance(value, dict):
        raise ConstraintRefused(field, "structured_outputs is an object")
    for key in value:
        if key not in STRUCTURED_KINDS:
            raise ConstraintRefused(
                f"{field}.{key}",
                "not accepted: structured_outputs holds one of json, regex, choice, grammar, "
                "json_object, and none of vLLM's other options (they change the tokens)",
            )
    if len(value) != 1:
        raise ConstraintRefused(
            field,
            "structured_outputs holds exactly one of json, regex, choice, grammar, json_object "
            "(a key holding null is not left out: leave it out)",
        )
    ((key, argument),) = value.items()
    kind = STRUCTURED_KINDS[key]
    where = f"{field}.{key}"
    if kind == "json_object" and argument is not True:
        raise ConstraintRefused(where, "json_object holds true")
    return kind, (None if kind == "json_object" else argument), where


def read_field(field: str, value: Any) -> SentConstraint:
    """A constraint field's value (as :func:`spelled_json.loads` reads it), checked: what it
    asks for and its JSON text. Raises :class:`ConstraintRefused`."""
    if field == "response_format":
        kind, argument, param = _response_format(value)
    elif field == "structured_outputs":
        kind, argument, param = _structured_outputs(value)
    else:
        raise ConstraintRefused(field, "not a constraint field")
    checked: str | tuple[str, ...] | None = None
    if kind == "json_schema":
        checked = check_schema_value(param, argument)
    elif kind == "regex":
        checked = check_text(param, argument, MAX_REGEX_CHARS, "regex")
    elif kind == "grammar":
        checked = check_text(param, argument, MAX_GRAMMAR_CHARS, "grammar")
    elif kind == "choice":
        checked = check_choices(param, argument)
    try:
        text = spelled_json.dumps(value)
    except ValueError as exc:
        raise ConstraintRefused(field, str(exc)) from None
    if len(text) > MAX_CONSTRAINT_CHARS:
        raise ConstraintRefused(
            field,
            f"{len(text)} characters of JSON; at most {MAX_CONSTRAINT_CHARS} are admitted "
            "(MAX_CONSTRAINT_CHARS)",
        )
    return SentConstraint(field, text, kind, checked, param)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=256)
def read_recorded(field: str, text: str) -> SentConstraint:
    """A recorded constraint field's JSON text, checked as when it was admitted; it must be in
    its compact form, the one it was sent in. Cached: a transcript repeats its constraints, and
    each exchange's is read when its line is validated, checked and indexed."""
    if len(text) > MAX_CONSTRAINT_CHARS:
        raise ConstraintRefused(field, f"longer than {MAX_CONSTRAINT_CHARS} characters")
    try:
        value = spelled_json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConstraintRefused(field, f"not JSON text: {exc}") from None
    sent = read_field(field, value)
    if sent.text != text:
        raise ConstraintRefused(field, "not in its compact form, the one it was sent in")
    return sent
