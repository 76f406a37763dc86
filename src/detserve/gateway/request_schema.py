"""The JSON Schemas (2020-12, as OpenAPI 3.1 holds them) of the gateway's request bodies, built
from the definitions admission itself reads, so that the published document cannot drift.

:func:`request_body_schema` documents exactly the fields admission accepts for a kind of request
(:data:`~detserve.gateway.admission.ACCEPTED_FIELDS`: a field accepted there without a schema
here fails the document's build, and no other field is documented: ``additionalProperties`` is
false), each from what admission reads it with: the gateway's pins (:class:`~detserve.gateway.
admission.Policy`: the served model name, the seed, ``max_model_len``, whether a
structured-outputs backend is pinned, without which only ``response_format`` ``text`` is
admitted), the canonical request's own JSON Schema (pydantic's, of
:class:`~detserve.runlog.ExchangeRequest`, which admission validates the record with: the
prompt, the messages and their roles, the stop strings, their lengths and counts), and the
constraints' shapes and caps (:mod:`detserve.constraints`).

What a JSON Schema cannot say is said in the description of the field it concerns, and admission
refuses it all the same (400 naming the field): integers spelled as integers (``4``, not
``4.0``), strings without a lone surrogate, a regex, a grammar (Lark syntax, no ``%import``;
``format: lark-grammar``) or a schema that compiles (a schema's ``$ref`` only inside it, within
:data:`~detserve.constraints.MAX_SCHEMA_NODES` values and :data:`~detserve.constraints.
MAX_SCHEMA_DEPTH` levels), a constraint field within :data:`~detserve.constraints.
MAX_CONSTRAINT_CHARS` characters of JSON.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final, Literal

from detserve.constraints import (
    JSON_SCHEMA_KEYS,
    MAX_CHOICES,
    MAX_CONSTRAINT_CHARS,
    MAX_GRAMMAR_CHARS,
    MAX_REGEX_CHARS,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_NODES,
    SCHEMA_NAME,
    STRUCTURED_KINDS,
)
from detserve.gateway.admission import ACCEPTED_FIELDS, Policy
from detserve.request_kinds import MAX_STOP_STRINGS
from detserve.runlog.models import ExchangeRequest

RequestKind = Literal["completion", "chat"]
#: the format of a Lark grammar (a name of this document's own: OpenAPI allows any)
LARK_FORMAT: Final = "lark-grammar"
_NULL: Final = {"type": "null"}
#: where the document holds its schemas (OpenAPI's components)
_COMPONENTS: Final = "#/components/schemas/"
#: what the JSON Schema a constraint holds is (the document does not restate its metaschema)
JSON_SCHEMA_VALUE: Final = {
    "type": "object",
    "description": (
        "a JSON Schema (the draft its $schema names, 2020-12 without one) that compiles; its "
        f"$ref only inside it (nothing is fetched); at most {MAX_SCHEMA_NODES} values and "
        f"{MAX_SCHEMA_DEPTH} levels deep. Sent to the engine and recorded as written: key "
        "order and number spellings kept"
    ),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _COMPONENTS + name}


def _nullable(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"anyOf": [schema, _NULL], "description": description}


@functools.cache
def _record_schema() -> dict[str, Any]:
    """The canonical request's JSON Schema (pydantic's, of the model admission validates the
    record with), its titles left out."""

    def untitled(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: untitled(item) for key, item in value.items() if key != "title"}
        if isinstance(value, list):
            return [untitled(item) for item in value]
        return value

    return untitled(ExchangeRequest.model_json_schema())  # type: ignore[no-any-return]


def _recorded(name: str) -> dict[str, Any]:
    """The record's schema of field ``name``, not null (a request leaves the field out)."""
    schema = _record_schema()["properties"][name]
    branches = [branch for branch in schema.get("anyOf", [schema]) if branch != _NULL]
    assert len(branches) == 1, schema
    return {key: value for key, value in branches[0].items() if key != "description"}


def _recorded_message() -> dict[str, Any]:
    return _record_schema()["$defs"]["ChatMessage"]  # type: ignore[no-any-return]


def _token_count(policy: Policy, name: str) -> dict[str, Any]:
    recorded = _recorded("max_tokens")
    assert recorded["type"] == "integer"
    maximum = min(recorded["maximum"], policy.max_model_len - 1)
    return _nullable(
        {"type": "integer", "minimum": recorded["minimum"], "maximum": maximum},
        f"tokens to generate, below max_model_len ({policy.max_model_len}); spelled as an "
        f"integer; absent or null: the profile's sampling.max_tokens ({policy.default_max_tokens})."
        + (" Not beside max_tokens, even as null" if name == "max_completion_tokens" else ""),
    )


def _response_format(policy: Policy) -> dict[str, Any]:
    def typed(kind: str, **properties: Any) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["type", *properties],
            "additionalProperties": False,
            "properties": {"type": {"type": "string", "enum": [kind]}, **properties},
        }

    json_schema = {
        "type": "object",
        "required": ["name", "schema"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": f"^{SCHEMA_NAME.pattern}$"},
            "description": {"type": "string"},
            "schema": _ref("JSONSchema"),
            "strict": _nullable(
                {"type": "boolean", "enum": [True]},
                "false is refused: vLLM enforces every schema",
            ),
        },
    }
    assert tuple(json_schema["properties"]) == JSON_SCHEMA_KEYS  # type: ignore[arg-type]
    shapes = [typed("text")]
    if policy.structured_outputs_pinned:
        shapes += [typed("json_object"), typed("json_schema", json_schema=json_schema)]
    return _nullable(
        {"oneOf": shapes},
        "OpenAI's response_format, sent to the engine and recorded as written"
        + (
            ""
            if policy.structured_outputs_pinned
            else "; only text: the profile pins no structured-outputs backend"
        ),
    )


def _structured_outputs(policy: Policy) -> dict[str, Any]:
    if not policy.structured_outputs_pinned:
        return {
            "type": "null",
            "description": "refused: the profile pins no structured-outputs backend",
        }
    arguments: dict[str, dict[str, Any]] = {
        "json": _ref("JSONSchema"),
        "regex": {
            "type": "string",
            "format": "regex",
            "minLength": 1,
            "maxLength": MAX_REGEX_CHARS,
            "description": "a pattern the regex package compiles; the output must match it whole",
        },
        "choice": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_CHOICES,
            "uniqueItems": True,
            "items": {"type": "string", "minLength": 1},
        },
        "grammar": {
            "type": "string",
            "format": LARK_FORMAT,
            "minLength": 1,
            "maxLength": MAX_GRAMMAR_CHARS,
            "description": "a self-contained Lark grammar (no %import) with a start rule",
        },
        "json_object": {"type": "boolean", "enum": [True]},
    }
    assert set(arguments) == set(STRUCTURED_KINDS)
    return _nullable(
        {
            "oneOf": [
                {
                    "type": "object",
                    "required": [key],
                    "additionalProperties": False,
                    "properties": {key: arguments[key]},
                }
                for key in STRUCTURED_KINDS
            ]
        },
        "vLLM's structured_outputs: exactly one of its keys, sent and recorded as written",
    )


def _field_schemas(policy: Policy) -> dict[str, Callable[[], dict[str, Any]]]:
    """Each field admission accepts, as a JSON Schema."""
    return {
        "model": lambda: {"type": "string", "enum": [policy.served_model_name]},
        "prompt": lambda: {**_recorded("prompt"), "description": "one prompt"},
        "messages": lambda: {**_recorded("messages"), "items": _ref("Message")},
        "max_tokens": lambda: _token_count(policy, "max_tokens"),
        "max_completion_tokens": lambda: _token_count(policy, "max_completion_tokens"),
        "temperature": lambda: _nullable(
            {"type": "number", "minimum": 0, "maximum": 0}, "0 only: sampling is greedy"
        ),
        "seed": lambda: _nullable(
            {"type": "integer", "enum": [policy.seed]}, "the profile's seed only"
        ),
        "n": lambda: _nullable({"type": "integer", "enum": [1]}, "one answer per request"),
        "stream": lambda: _nullable(
            {"type": "boolean"}, "true: the answer as server-sent events (text/event-stream)"
        ),
        "stop": lambda: _nullable(
            {
                "anyOf": [
                    _recorded("stop")["items"],
                    _recorded("stop") | {"maxItems": MAX_STOP_STRINGS},  # the engine's cap
                ]
            },
            "a stop string or a list of them; sent and recorded as a list",
        ),
        "response_format": lambda: _ref("ResponseFormat"),
        "structured_outputs": lambda: _ref("StructuredOutputs"),
    }


def request_schemas(policy: Policy) -> dict[str, dict[str, Any]]:
    """The request bodies' schemas and those they name, by their names in the document's
    components: ``CompletionRequest``, ``ChatCompletionRequest`` and their parts."""
    return {
        "CompletionRequest": request_body_schema("completion", policy),
        "ChatCompletionRequest": request_body_schema("chat", policy),
        "Message": _recorded_message(),
        "ResponseFormat": _response_format(policy),
        "StructuredOutputs": _structured_outputs(policy),
        "JSONSchema": JSON_SCHEMA_VALUE,
    }


def request_body_schema(kind: RequestKind, policy: Policy) -> dict[str, Any]:
    """The JSON Schema of a ``completion`` or ``chat`` request body admission accepts."""
    schemas = _field_schemas(policy)
    accepted = sorted(ACCEPTED_FIELDS[kind])
    undocumented = [name for name in accepted if name not in schemas]
    if undocumented:
        raise RuntimeError(f"admission accepts fields the document does not hold: {undocumented}")
    exclusive = [["response_format", "structured_outputs"]]
    if kind == "chat":
        exclusive.append(["max_tokens", "max_completion_tokens"])
    return {
        "type": "object",
        "required": ["model", "prompt" if kind == "completion" else "messages"],
        "additionalProperties": False,
        "properties": {name: schemas[name]() for name in accepted},
        # both of a pair present is refused, whatever they hold (a null is not left out)
        "not": {"anyOf": [{"required": pair} for pair in exclusive]},
        "description": (
            "Every other field is refused by name (400). A constraint field is at most "
            f"{MAX_CONSTRAINT_CHARS} characters of JSON; no string holds a lone surrogate"
        ),
    }


def request_examples(kind: RequestKind, policy: Policy) -> dict[str, dict[str, Any]]:
    """Bodies admission admits, as the document's examples (OpenAPI ``examples``): a test
    admits each, and Schemathesis sends each to a live gateway."""
    model = policy.served_model_name
    if kind == "completion":
        examples: dict[str, Any] = {
            "whole": {"model": model, "prompt": "The quick brown fox", "max_tokens": 16},
            "streamed": {
                "model": model,
                "prompt": "1, 2, 3,",
                "max_tokens": 8,
                "stream": True,
                "stop": ["\n"],
            },
        }
        constrained: dict[str, Any] = {
            "structured_outputs": {"regex": "[0-9]{4}"},
            "prompt": "A year:",
        }
    else:
        messages = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Is the sky blue?"},
        ]
        examples = {
            "whole": {"model": model, "messages": messages, "temperature": 0, "seed": policy.seed},
            "streamed": {
                "model": model,
                "messages": messages[1:],
                "max_completion_tokens": 8,
                "stream": True,
            },
        }
        # properties out of alphabetical order: sent, recorded and replayed in this order
        schema = {
            "type": "object",
            "properties": {"confident": {"type": "boolean"}, "answer": {"enum": ["yes", "no"]}},
            "required": ["confident", "answer"],
            "additionalProperties": False,
        }
        constrained = {
            "messages": messages,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": schema},
            },
        }
    if policy.structured_outputs_pinned:
        examples["constrained"] = {"model": model, "max_tokens": 40, **constrained}
    return {name: {"value": value} for name, value in examples.items()}
