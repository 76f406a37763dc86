"""Strict admission: which client requests the gateway answers, and their one canonical form.

The gateway answers only what it can record as a replayable claim. A request body is admitted
field by field against an allowlist; anything else is refused by name (:class:`Refused`, a 400
in OpenAI's error shape naming the field):

* ``model`` must be the pinned served name; ``temperature`` absent or 0; ``seed`` absent or the
  profile's; ``n`` absent or 1; ``stream`` a boolean;
* a completion's ``prompt`` is one string; a chat's ``messages`` are ``system``/``user``/
  ``assistant`` messages with string content; ``max_tokens`` (or a chat's
  ``max_completion_tokens``) defaults to the profile's ``sampling.max_tokens``;
* ``stop`` is a string or a list of strings;
* constraints pass through and are recorded: ``response_format`` ``{"type": "json_schema",
  "json_schema": {"schema": ...}}`` or ``{"type": "json_object"}`` and vLLM's
  ``structured_outputs`` (``json``, ``regex``, ``choice``, ``grammar``, ``json_object``: one of
  them) become the canonical ``constraint``; the output is checked against it once the engine
  answered (:mod:`~detserve.gateway.output_check`);
* refused by name with the reason: any chat-template override (``chat_template``,
  ``chat_template_kwargs``, ``add_generation_prompt``, ...), sampling options that change or
  randomise the tokens (``top_p``, ``top_k``, penalties, ``logit_bias``, ...), and options not
  recorded yet (``logprobs``, ``echo``, tools); every other field is refused as unknown.

The canonical form (:class:`~detserve.runlog.ExchangeRequest`) is the prompt bundle line's form
(request kinds): what the transcript records and what the upstream body
(:func:`upstream_body`) is built from, so a replay sends exactly what the gateway sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from detserve.requests import MAX_SCHEMA_DEPTH, json_depth
from detserve.runlog.models import ExchangeRequest

#: what a field refused by name is refused for
_REFUSED: Final[dict[str, str]] = {
    **dict.fromkeys(
        (
            "chat_template",
            "chat_template_kwargs",
            "add_generation_prompt",
            "continue_final_message",
            "add_special_tokens",
            "documents",
            "mm_processor_kwargs",
        ),
        "a chat template or its options from a request is not the pinned template",
    ),
    **dict.fromkeys(
        (
            "top_p",
            "top_k",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "logit_bias",
            "best_of",
            "use_beam_search",
            "min_tokens",
            "bad_words",
            "allowed_token_ids",
            "logits_processors",
            "vllm_xargs",
            "priority",
        ),
        "sampling is greedy with the profile's parameters only",
    ),
    **dict.fromkeys(
        ("logprobs", "top_logprobs", "prompt_logprobs", "echo", "suffix"),
        "not recorded in a transcript yet",
    ),
    **dict.fromkeys(
        ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"),
        "tool calls are not recorded in a transcript yet",
    ),
    "stream_options": "usage chunks are not part of a recorded answer",
    "return_token_ids": "the gateway asks for token ids itself",
}
_COMMON: Final = frozenset(
    {"model", "max_tokens", "temperature", "seed", "n", "stream", "stop", "user"}
    | {"response_format", "structured_outputs"}
)
_ALLOWED: Final = {
    "completion": _COMMON | {"prompt"},
    "chat": _COMMON | {"messages", "max_completion_tokens"},
}
_STRUCTURED: Final = {"json": "json_schema", "regex": "regex", "choice": "choice"} | {
    "grammar": "grammar",
    "json_object": "json_object",
}


class Refused(Exception):
    """A request the gateway does not answer: an HTTP status, the field, and why."""

    def __init__(
        self, param: str | None, message: str, *, status: int = 400, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.status = status
        self.code = code

    def body(self) -> dict[str, Any]:
        """OpenAI's error shape."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


@dataclass(frozen=True)
class Policy:
    """What a request is admitted against: the profile's pins."""

    served_model_name: str
    seed: int
    default_max_tokens: int
    max_model_len: int
    #: the profile pins a structured-outputs backend; without one a constraint is refused, as a
    #: bundle's is (vLLM's ``auto`` would pick a backend per request: not a pin)
    structured_outputs_pinned: bool


@dataclass(frozen=True)
class Admitted:
    """An admitted request: its canonical form and whether the client wants a stream."""

    request: ExchangeRequest
    stream: bool


def _number_is(value: object, expected: int) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == expected


def _stop(value: object) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise Refused("stop", "stop must be a non-empty string or a list of them")
    return stops or None


def _shallow(field: str, value: Any) -> None:
    # the schema libraries recurse: a schema nested hundreds deep would run them out of stack
    if json_depth(value) > MAX_SCHEMA_DEPTH:
        raise Refused(field, f"{field}: a schema may nest at most {MAX_SCHEMA_DEPTH} levels")


def _constraint(body: Mapping[str, Any]) -> dict[str, Any] | None:
    found: list[tuple[str, dict[str, Any]]] = []
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict) or "type" not in response_format:
            raise Refused("response_format", "response_format must be an object with a type")
        kind = response_format["type"]
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise Refused(
                    "response_format", "response_format json_schema needs json_schema.schema"
                )
            _shallow("response_format", schema)
            found.append(("response_format", {"json_schema": schema}))
        elif kind == "json_object":
            found.append(("response_format", {"json_object": True}))
        elif kind != "text":
            raise Refused("response_format", f"response_format type {kind!r} is not supported")
    structured = body.get("structured_outputs")
    if structured is not None:
        given = (
            [key for key in structured if structured[key] is not None]
            if isinstance(structured, dict)
            else []
        )
        if len(given) != 1 or given[0] not in _STRUCTURED:
            raise Refused(
                "structured_outputs",
                "structured_outputs must hold exactly one of json, regex, choice, grammar, "
                "json_object",
            )
        _shallow("structured_outputs", structured[given[0]])
        found.append(("structured_outputs", {_STRUCTURED[given[0]]: structured[given[0]]}))
    if len(found) > 1:
        raise Refused("structured_outputs", "give response_format or structured_outputs, not both")
    return found[0][1] if found else None


def admit(kind: str, body: object, policy: Policy) -> Admitted:
    """The canonical form of an admitted request; raise :class:`Refused` naming the field."""
    if not isinstance(body, dict):
        raise Refused(None, "the request body must be a JSON object")
    for name in sorted(body):
        if name in _REFUSED:
            raise Refused(name, f"{name} is refused: {_REFUSED[name]}")
        if name not in _ALLOWED[kind]:
            raise Refused(name, f"{name} is not accepted by this gateway (strict admission)")
    if body.get("model") != policy.served_model_name:
        raise Refused("model", f"model must be {policy.served_model_name!r}")
    if body.get("temperature") is not None and not _number_is(body["temperature"], 0):
        raise Refused("temperature", "temperature is refused unless 0: sampling is greedy")
    if body.get("seed") is not None and not _number_is(body["seed"], policy.seed):
        raise Refused("seed", f"seed is refused unless it is the profile's ({policy.seed})")
    if body.get("n") is not None and not _number_is(body["n"], 1):
        raise Refused("n", "n is refused unless 1: one answer per request")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise Refused("stream", "stream must be a boolean")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise Refused("user", "user must be a string")
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = body.get(name)
    if max_tokens is None:
        max_tokens = policy.default_max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise Refused(name, f"{name} must be a positive integer")
    if max_tokens >= policy.max_model_len:
        raise Refused(name, f"{name} must be below max_model_len ({policy.max_model_len})")
    constraint = _constraint(body)
    if constraint is not None and not policy.structured_outputs_pinned:
        field = "structured_outputs" if body.get("structured_outputs") is not None else None
        raise Refused(
            field or "response_format",
            "constraints are refused: this gateway's profile pins no structured-outputs backend",
        )
    canonical: dict[str, Any] = {
        "constraint": constraint,
        "kind": kind,
        "max_tokens": max_tokens,
        "messages": None,
        "prompt": None,
        "stop": _stop(body.get("stop")),
    }
    if kind == "completion":
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise Refused("prompt", "prompt must be one non-empty string")
        canonical["prompt"] = prompt
    else:
        canonical["messages"] = _messages(body.get("messages"))
    try:
        # through JSON, where arrays become the record's tuples under strict validation
        request = ExchangeRequest.model_validate_json(json.dumps(canonical))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = str(error["loc"][0]) if error["loc"] else None
        raise Refused(field, f"{field or 'request'}: {error['msg']}") from None
    return Admitted(request=request, stream=bool(stream))


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise Refused("messages", "messages must be a non-empty list")
    messages = []
    for position, message in enumerate(value):
        where = f"messages[{position}]"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise Refused(where, f"{where} must hold only role and content")
        if message.get("role") not in ("system", "user", "assistant"):
            raise Refused(f"{where}.role", f"{where}.role must be system, user or assistant")
        if not isinstance(message.get("content"), str):
            raise Refused(f"{where}.content", f"{where}.content must be a string")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("a key is repeated")
    return document


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(raw: bytes) -> Any:
    """A request body as JSON: strict UTF-8, no repeated key, no NaN or infinity."""
    try:
        return json.loads(raw, object_pairs_hook=unique_keys, parse_constant=refuse_constant)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Refused(None, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise Refused(None, "the body is not valid JSON here: it nests too deeply") from None


def upstream_body(
    request: ExchangeRequest, *, model: str, seed: int, stream: bool
) -> dict[str, Any]:
    """The exact body sent to the engine for a canonical request: greedy, seeded, one choice,
    token ids returned; never a chat template or any of its options."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "temperature": 0,
        "seed": seed,
        "n": 1,
        "stream": stream,
        "return_token_ids": True,
    }
    if request.stop is not None:
        body["stop"] = list(request.stop)
    constraint = request.constraint
    if constraint is not None:
        ((kind, argument),) = constraint.items()
        body["structured_outputs"] = {"json" if kind == "json_schema" else kind: argument}
    if request.messages is not None:
        body["messages"] = [message.model_dump() for message in request.messages]
    else:
        body["prompt"] = request.prompt
    return body


def upstream_path(request: ExchangeRequest) -> str:
    return "/v1/chat/completions" if request.kind == "chat" else "/v1/completions"
