"""Strict admission: which client requests the gateway answers, and the complete record of each.

The gateway answers only what it can record as a replayable claim, and decides it before the
request takes a slot or anything is sent. Nothing a client sends is dropped or rewritten: a
field is either sent to the engine as the client wrote it and recorded, or refused by name
(:class:`Refused`, in OpenAI's error shape naming ``param``):

* the body is ``Content-Type: application/json`` (``; charset=utf-8`` allowed; else 415) and
  strict UTF-8 JSON (no byte order mark, no UTF-16 or UTF-32, no repeated key, NaN or infinity);
* the pinned fields are accepted only at their pinned value, and sent as the pins say (the
  transcript's header holds them): ``model`` the served name, ``temperature`` 0, ``seed`` the
  profile's and ``n`` 1 (integers spelled as integers); ``stream`` a boolean;
* a completion's ``prompt`` is one string; a chat's ``messages`` are ``system``/``user``/
  ``assistant`` messages with string content; ``max_tokens`` or ``max_completion_tokens``, not
  both (a null beside the other is refused, not ignored), defaults to the profile's
  ``sampling.max_tokens`` and is recorded and sent as ``max_tokens`` (vLLM reads both the
  same); ``stop`` is a string or a list of strings, sent as a list;
* a constraint field, ``response_format`` or ``structured_outputs``, is sent to the engine as
  the client wrote it (key order, which decides the order in which the engine writes a
  schema's fields, and number spellings kept) and recorded as that JSON text; its shapes and
  caps are :mod:`detserve.constraints` (``response_format`` passes through whole, ``name`` and
  ``description`` included, since vLLM reads it natively and OpenAI's clients always send a
  ``name``; ``strict: false`` is refused: vLLM enforces every schema). The output is checked
  against it once the engine answered (:mod:`~detserve.gateway.output_check`);
* refused by name with the reason: any chat-template override (``chat_template``,
  ``chat_template_kwargs``, ``add_generation_prompt``, ...), sampling options that change or
  randomise the tokens (``top_p``, ``top_k``, penalties, ``logit_bias``, ...), options not
  recorded (``logprobs``, ``echo``, tools, ``user``); every other field is refused as unknown.

:func:`admit` builds the exchange's record: the canonical request
(:class:`~detserve.runlog.ExchangeRequest`, every string checked writable), its hash, and the
exact bytes the engine is sent (:func:`upstream_request`, the one function the gateway and its
replay build a body with); :func:`compile_constraint` then compiles the constraint (a schema, its
references only inside it; a regex; a Lark grammar) in the checker's child process within its
time limit, awaited in a worker thread. :func:`admit_body` runs the whole of it (the body's
reading included) off the event loop. A request that cannot be recorded, canonicalised or
checked is a 400 naming the field, before anything is sent.
"""

from __future__ import annotations

import asyncio
import codecs
import decimal
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final, get_args

from pydantic import ValidationError

from detserve import spelled_json
from detserve.constraint_check import compile_problem, in_worker
from detserve.constraints import (
    CONSTRAINT_FIELDS,
    ConstraintRefused,
    SentConstraint,
    read_field,
)
from detserve.gateway.upstream_body import upstream_request
from detserve.profile import Profile
from detserve.request_kinds import MAX_STOP_STRINGS, TEMPLATE_OVERRIDES
from detserve.runlog.models import MAX_LINE_BYTES, ChatMessage, ExchangeRequest
from detserve.runlog.transcript import canonical_request
from detserve.spelled_json import Number

#: what a field refused by name is refused for (a later entry's reason wins: ``tools``)
REFUSED_FIELDS: Final[dict[str, str]] = {
    **dict.fromkeys(
        sorted(TEMPLATE_OVERRIDES),
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
    "user": "an end-user id is not part of a recorded request (it would be dropped)",
    "return_token_ids": "the gateway asks for token ids itself",
}
_COMMON: Final = frozenset(
    {"model", "max_tokens", "temperature", "seed", "n", "stream", "stop"}
    | {"response_format", "structured_outputs"}
)
#: the fields each kind of request may hold (:mod:`~detserve.gateway.request_schema` documents
#: each, so the published document cannot name another)
ACCEPTED_FIELDS: Final = {
    "completion": _COMMON | {"prompt"},
    "chat": _COMMON | {"messages", "max_completion_tokens"},
}
#: the roles a chat message may have: the record's
MESSAGE_ROLES: Final[tuple[str, ...]] = get_args(ChatMessage.model_fields["role"].annotation)
#: the longest canonical request admitted: half a transcript line, the other half for the
#: prompt's and the output's tokens and text
MAX_REQUEST_BYTES: Final = MAX_LINE_BYTES // 2


def writable(text: str) -> str:
    """``text`` with each lone surrogate (no UTF-8 text can hold one) written as its ``\\udXXX``
    escape: what a refusal says of a client's strings can always be sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Refused(Exception):
    """A request the gateway does not answer: an HTTP status, the field, and why."""

    def __init__(
        self, param: str | None, message: str, *, status: int = 400, code: str | None = None
    ) -> None:
        # A refusal names what the client sent (a key, a value, the engine's own message): a
        # lone surrogate there would fail the answer's UTF-8 and make a 400 a 500 that doubts
        # the gateway's state. Escaped here, so every refusal can be written.
        param, message = (None if param is None else writable(param)), writable(message)
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

    @classmethod
    def of_profile(cls, profile: Profile) -> Policy:
        """The policy of a gateway serving ``profile``."""
        return cls(
            served_model_name=profile.vllm.served_model_name,
            seed=profile.sampling.seed,
            default_max_tokens=profile.sampling.max_tokens,
            max_model_len=profile.vllm.max_model_len,
            structured_outputs_pinned=profile.vllm.structured_outputs is not None,
        )


@dataclass(frozen=True)
class Admitted:
    """An admitted request, everything its exchange needs decided before anything is sent: the
    canonical request, its hash, the engine's endpoint and body bytes, and its constraint."""

    request: ExchangeRequest
    request_sha256: str
    #: the bytes of the request's canonical JSON, what it takes of its transcript line
    request_bytes: int
    #: the engine's endpoint and the exact bytes sent there (:func:`upstream_request`)
    path: str
    body: bytes
    stream: bool
    #: the constraint the output is held to, or None (compiled by :func:`compile_constraint`)
    constraint: SentConstraint | None


def check_content_type(value: str | None) -> None:
    """Refuse (415) a body not declared ``application/json`` (``; charset=utf-8`` allowed): a
    browser's simple ``text/plain`` POST is never answered."""
    media, *parameters = (value or "").split(";")
    charset_only = all(
        name.strip().lower() == "charset" and setting.strip().strip('"').lower() == "utf-8"
        for name, _, setting in (parameter.partition("=") for parameter in parameters)
    )
    if media.strip().lower() != "application/json" or not charset_only:
        raise Refused(
            None,
            "the body must be sent as Content-Type: application/json (UTF-8), not "
            f"{(value or 'none')[:100]!r}",
            status=415,
            code="unsupported_media_type",
        )


def parse_body(raw: bytes) -> Any:
    """A request body: strict UTF-8 (no byte order mark, no UTF-16 or UTF-32) JSON with no
    repeated key, no NaN or infinity; objects in their key order and numbers as spelled
    (:func:`detserve.spelled_json.loads`), so a constraint is sent as the client wrote it."""
    if raw.startswith(codecs.BOM_UTF8):
        raise Refused(None, "the body starts with a byte order mark: send UTF-8 without one")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(
            None, f"the body is not UTF-8 (byte {exc.start}): JSON is sent as UTF-8"
        ) from None
    if "\x00" in text:
        raise Refused(None, "the body holds NUL bytes: UTF-16 or UTF-32? JSON is sent as UTF-8")
    try:
        return spelled_json.loads(text)
    except ValueError as exc:
        raise Refused(None, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise Refused(None, "the body is not valid JSON here: it nests too deeply") from None


def _integer(name: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, Number) or not value.is_integer or len(value.spelling) > 20:
        raise Refused(name, f"{name} must be an integer")
    return int(value.spelling)


def _utf8(param: str, text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused(param, f"{param} holds a lone surrogate (a \\ud800-\\udfff escape)") from None
    return text


def _stop(value: object) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not stops or not all(isinstance(s, str) and s for s in stops):
        # an empty list would be sent as no stop at all: refused rather than dropped
        raise Refused("stop", "stop must be a non-empty string or a non-empty list of them")
    if len(stops) > MAX_STOP_STRINGS:
        # the engine refuses more; refused here, by name, before anything is sent or recorded
        raise Refused("stop", f"at most {MAX_STOP_STRINGS} stop strings (the engine takes no more)")
    return [_utf8("stop", stop) for stop in stops]


def _constraint(body: dict[str, Any]) -> SentConstraint | None:
    given = [name for name in CONSTRAINT_FIELDS if name in body]
    if len(given) > 1:
        raise Refused(
            "structured_outputs",
            "give response_format or structured_outputs, not both (a null is not left out)",
        )
    if not given or body[given[0]] is None:
        return None
    try:
        return read_field(given[0], body[given[0]])
    except ConstraintRefused as refused:
        raise Refused(refused.param, refused.message) from None


def _max_tokens(kind: str, body: dict[str, Any], policy: Policy) -> int:
    if "max_completion_tokens" in body and "max_tokens" in body:
        raise Refused(
            "max_completion_tokens",
            "give max_tokens or max_completion_tokens, not both (a null is not left out)",
        )
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _integer(name, body.get(name))
    if max_tokens is None:
        return policy.default_max_tokens
    if max_tokens < 1:
        raise Refused(name, f"{name} must be a positive integer")
    if max_tokens >= policy.max_model_len:
        raise Refused(name, f"{name} must be below max_model_len ({policy.max_model_len})")
    return max_tokens


def admit(kind: str, body: object, policy: Policy) -> Admitted:
    """The complete record of an admitted request (its body as :func:`parse_body` reads it);
    raise :class:`Refused` naming the field. Its constraint is compiled next
    (:func:`compile_constraint`), before anything is sent."""
    if not isinstance(body, dict):
        raise Refused(None, "the request body must be a JSON object")
    for name in sorted(body):
        if name in REFUSED_FIELDS:
            raise Refused(name, f"{name} is refused: {REFUSED_FIELDS[name]}")
        if name not in ACCEPTED_FIELDS[kind]:
            raise Refused(name, f"{name} is not accepted by this gateway (strict admission)")
    if body.get("model") != policy.served_model_name:
        raise Refused("model", f"model must be {policy.served_model_name!r}")
    temperature = body.get("temperature")
    # exactly zero as written: 1e-400 is not 0, though a double rounds it there
    if temperature is not None and not (
        isinstance(temperature, Number) and decimal.Decimal(temperature.spelling).is_zero()
    ):
        raise Refused("temperature", "temperature is refused unless 0: sampling is greedy")
    if _integer("seed", body.get("seed")) not in (None, policy.seed):
        raise Refused("seed", f"seed is refused unless it is the profile's ({policy.seed})")
    if _integer("n", body.get("n")) not in (None, 1):
        raise Refused("n", "n is refused unless 1: one answer per request")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise Refused("stream", "stream must be a boolean")
    sent = _constraint(body)
    if sent is not None and sent.kind is not None and not policy.structured_outputs_pinned:
        raise Refused(
            sent.field,
            "constraints are refused: this gateway's profile pins no structured-outputs backend",
        )
    canonical: dict[str, Any] = {
        "kind": kind,
        "max_tokens": _max_tokens(kind, body, policy),
        "messages": None,
        "prompt": None,
        "response_format": None,
        "stop": _stop(body.get("stop")),
        "structured_outputs": None,
    }
    if sent is not None:
        canonical[sent.field] = sent.text
    if kind == "completion":
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise Refused("prompt", "prompt must be one non-empty string")
        canonical["prompt"] = _utf8("prompt", prompt)
    else:
        canonical["messages"] = _messages(body.get("messages"))
    try:
        # through JSON, where arrays become the record's tuples under strict validation
        request = ExchangeRequest.model_validate_json(json.dumps(canonical))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = str(error["loc"][0]) if error["loc"] else None
        raise Refused(field, f"{field or 'request'}: {error['msg']}") from None
    line = canonical_request(request)  # every string was checked: it is writable
    if len(line) > MAX_REQUEST_BYTES:
        raise Refused(
            None,
            f"the request's record would be {len(line)} bytes; at most {MAX_REQUEST_BYTES} are "
            "admitted (MAX_REQUEST_BYTES, half a transcript line)",
        )
    path, upstream = upstream_request(
        request, model=policy.served_model_name, seed=policy.seed, stream=bool(stream)
    )
    return Admitted(
        request=request,
        request_sha256=hashlib.sha256(line).hexdigest(),
        request_bytes=len(line),
        path=path,
        body=upstream,
        stream=bool(stream),
        constraint=sent if sent is not None and sent.kind is not None else None,
    )


async def compile_constraint(admitted: Admitted) -> None:
    """Compile the request's constraint (a schema with its references, a regex, a grammar) in
    the checker's child, awaited in a worker: raise :class:`Refused` (400, naming the field) for
    one that does not compile, or not within the checker's limit."""
    constraint = admitted.constraint
    if constraint is None or not isinstance(constraint.argument, str):
        return  # a choice or json_object: nothing to compile
    kind = constraint.kind
    assert kind == "json_schema" or kind == "regex" or kind == "grammar"
    try:
        problem = await in_worker(compile_problem, kind, constraint.argument)
    except TimeoutError as exc:
        raise Refused(
            constraint.param, f"{constraint.param}: the {kind} cannot be checked: {exc}"
        ) from None
    if problem is not None:
        raise Refused(
            constraint.param, f"{constraint.param}: the {kind} cannot be checked: {problem}"
        )


async def admit_body(kind: str, raw: bytes, policy: Policy) -> Admitted:
    """The whole of admission, off the event loop: the body read and admitted in a thread (a
    2 MiB body of numbers takes a good part of a second to read as spelled, a schema as long to
    count), then the constraint compiled in the checker's child (:func:`compile_constraint`)."""
    admitted = await asyncio.to_thread(lambda: admit(kind, parse_body(raw), policy))
    await compile_constraint(admitted)
    return admitted


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise Refused("messages", "messages must be a non-empty list")
    messages = []
    for position, message in enumerate(value):
        where = f"messages[{position}]"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise Refused(where, f"{where} must hold only role and content")
        if message.get("role") not in MESSAGE_ROLES:
            raise Refused(f"{where}.role", f"{where}.role must be system, user or assistant")
        if not isinstance(message.get("content"), str):
            raise Refused(f"{where}.content", f"{where}.content must be a string")
        content = _utf8(f"{where}.content", message["content"])
        messages.append({"role": message["role"], "content": content})
    return messages
