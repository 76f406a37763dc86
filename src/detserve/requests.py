"""Request kinds: what one bundle line asks of the server, and how it is sent and recorded.

One canonical form, used by bundles, sampling, run logs and replay. A line of ``prompts.jsonl``
is one :class:`PromptRecord`:

* a **completion**: ``{"id", "n_tokens", "prompt"}``, sent to ``/v1/completions``;
* a **chat**: ``{"id", "n_tokens", "messages": [{"role", "content"}, ...]}`` (roles ``system``,
  ``user``, ``assistant``), sent to ``/v1/chat/completions`` and rendered by the server with the
  chat template of the pinned snapshot; no line can supply or configure a template;

each optionally with ``stop`` strings and one ``constraint``: ``{"json_schema": {...}}``,
``{"regex": "..."}``, ``{"choice": ["...", ...]}`` or ``{"grammar": "..."}`` (Lark syntax),
sent as vLLM's ``structured_outputs``.

Invariants: a line is the RFC 8785 form of its record with absent fields left out (one form per
request, so the bundle's hash pins each request exactly); a constraint is checked when the line
is parsed (a JSON Schema against its metaschema, a regex by the ``regex`` package, a grammar by
``lark``), so a line that loads can be checked after sampling; :func:`sample_record` is the one
place a request is made and turned into a run-log sample. A regex is matched with a time limit
(:data:`REGEX_CHECK_TIMEOUT_S`) and a grammar parsed in a child process with one
(:mod:`detserve.grammar_check`): a bundle is someone's claim, and a pattern that backtracks for
ever must not hang the verifier (:class:`ConstraintUncheckable`, exit 2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, Protocol

import regex
from pydantic import BaseModel, ConfigDict, Field, model_validator

from detserve.canonical import MAX_EXACT_INTEGER, canonical_json
from detserve.constraint_check import accepts, json_validator, lark_parser
from detserve.errors import (
    BundleError,
    ConstraintViolated,
    InputError,
    PinMismatch,
    RequestRefused,
)

MAX_PROMPT_BYTES: Final = 1 << 20
MAX_MESSAGES: Final = 1024
MAX_STOP_STRINGS: Final = 16
MAX_CHOICES: Final = 1024
#: the deepest a JSON Schema may nest (objects and arrays, counted from 1): the schema
#: libraries recurse, and a schema a few hundred levels deep ran them out of stack
MAX_SCHEMA_DEPTH: Final = 32
#: wall-clock seconds one regex constraint's full match may take; a pattern that backtracks
#: catastrophically on an output is refused rather than waited for
REGEX_CHECK_TIMEOUT_S: Final = 2.0
COMPLETIONS_PATH: Final = "/v1/completions"
CHAT_PATH: Final = "/v1/chat/completions"

RequestKind = Literal["completion", "chat"]
ConstraintKind = Literal["json_schema", "regex", "choice", "grammar"]
#: keys that would supply or configure a chat template from a bundle line: refused by name
TEMPLATE_OVERRIDES: Final = frozenset(
    {
        "chat_template",
        "chat_template_kwargs",
        "add_generation_prompt",
        "continue_final_message",
        "add_special_tokens",
        "documents",
        "tools",
    }
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Message(_Frozen):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_BYTES)


def json_depth(value: Any) -> int:
    """How deep a JSON value nests (a scalar 0, ``{}`` and ``[]`` 1), without recursing."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


class ConstraintUncheckable(BundleError):
    """A constraint whose check of an output cannot finish (a regex that backtracks for ever, a
    grammar whose parse does not end in time)."""


def regex_fullmatch(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches the whole of ``text``, within :data:`REGEX_CHECK_TIMEOUT_S`;
    raises :class:`ConstraintUncheckable` past it."""
    try:
        return regex.fullmatch(pattern, text, timeout=REGEX_CHECK_TIMEOUT_S) is not None
    except TimeoutError:
        raise ConstraintUncheckable(
            f"the regex constraint did not finish matching a {len(text)}-character output in "
            f"{REGEX_CHECK_TIMEOUT_S:g} s (the pattern backtracks catastrophically)",
            hint="write the pattern without nested or overlapping repetition",
        ) from None


class Constraint(_Frozen):
    """Exactly one structured-output constraint."""

    json_schema: dict[str, Any] | None = None
    regex: str | None = Field(default=None, min_length=1, max_length=1 << 16)
    choice: list[str] | None = Field(default=None, min_length=1, max_length=MAX_CHOICES)
    grammar: str | None = Field(default=None, min_length=1, max_length=1 << 16)

    @model_validator(mode="after")
    def _one_and_valid(self) -> Constraint:
        given = [
            name
            for name in ("json_schema", "regex", "choice", "grammar")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "a constraint holds exactly one of json_schema, regex, choice, grammar; "
                f"found {', '.join(given) or 'none'}"
            )
        if self.json_schema is not None:
            from jsonschema.exceptions import SchemaError

            if json_depth(self.json_schema) > MAX_SCHEMA_DEPTH:
                raise ValueError(f"json_schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
            try:
                json_validator(canonical_json(self.json_schema))
            except SchemaError as exc:
                raise ValueError(f"json_schema is not a valid JSON Schema: {exc.message}") from None
        elif self.regex is not None:
            try:
                regex.compile(self.regex)
            except regex.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        elif self.choice is not None:
            if any(not option for option in self.choice) or len(set(self.choice)) != len(
                self.choice
            ):
                raise ValueError("choice options must be distinct, non-empty strings")
        elif self.grammar is not None:
            from lark.exceptions import LarkError

            try:
                lark_parser(self.grammar)
            except LarkError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(
                    f"grammar is not a Lark grammar with a 'start' rule: {first}"
                ) from None
        return self

    @property
    def kind(self) -> ConstraintKind:
        if self.json_schema is not None:
            return "json_schema"
        if self.regex is not None:
            return "regex"
        if self.choice is not None:
            return "choice"
        return "grammar"

    def canonical(self) -> str:
        return canonical_json(self.model_dump(exclude_none=True))

    @property
    def sha256(self) -> str:
        """sha256 of the constraint's canonical JSON (as the bundle line holds it)."""
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

    def structured_outputs(self) -> dict[str, Any]:
        """The request's ``structured_outputs`` field (vLLM's ``StructuredOutputsParams``)."""
        if self.json_schema is not None:
            return {"json": self.json_schema}
        if self.regex is not None:
            return {"regex": self.regex}
        if self.choice is not None:
            return {"choice": list(self.choice)}
        return {"grammar": self.grammar}

    def satisfied_by(self, text: str) -> bool:
        """detserve's own check: the JSON validates, the regex matches in full, the text is a
        choice, or the grammar (by ``lark``) parses the whole text. A check that cannot finish
        in its time limit (:data:`REGEX_CHECK_TIMEOUT_S`; ``constraint_check.CHECK_TIMEOUT_S``)
        or fails in its library raises :class:`ConstraintUncheckable`."""
        if self.regex is not None:
            return regex_fullmatch(self.regex, text)
        if self.choice is not None:
            return text in self.choice
        if self.json_schema is not None:
            kind, argument = "json_schema", canonical_json(self.json_schema)
        else:
            assert self.grammar is not None
            kind, argument = "grammar", self.grammar
        try:
            verdict, reason = accepts(kind, argument, text)  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise ConstraintUncheckable(
                f"the {kind} constraint did not finish checking a {len(text)}-character output: "
                f"{exc}",
                hint="a schema pattern that backtracks, or an ambiguous grammar (Earley parsing "
                "is cubic or worse), cannot be checked; write it otherwise",
            ) from None
        if verdict is None:
            raise ConstraintUncheckable(f"the {kind} constraint cannot be checked: {reason}")
        return verdict


class PromptRecord(_Frozen):
    """One line of a bundle: a completion or a chat, with optional stop strings and constraint."""

    id: str = Field(min_length=1, max_length=200)
    n_tokens: int = Field(ge=1, le=MAX_EXACT_INTEGER)
    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_BYTES)
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)
    stop: list[str] | None = Field(default=None, min_length=1, max_length=MAX_STOP_STRINGS)
    constraint: Constraint | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> PromptRecord:
        if self.prompt is not None and self.messages is not None:
            raise ValueError(
                "a line holds either 'prompt' (a completion) or 'messages' (a chat), not both"
            )
        if self.prompt is None and self.messages is None:
            raise ValueError("a line needs 'prompt' (a completion) or 'messages' (a chat)")
        if self.stop is not None and any(not stop for stop in self.stop):
            raise ValueError("stop strings must not be empty")
        return self

    @property
    def kind(self) -> RequestKind:
        return "chat" if self.messages is not None else "completion"

    def line_value(self) -> dict[str, Any]:
        """The record as its canonical line holds it: absent fields left out."""
        return self.model_dump(exclude_none=True)

    @property
    def sha256(self) -> str:
        """The prompt's hash: of its UTF-8 text for a completion, of the canonical JSON of its
        messages for a chat."""
        if self.prompt is not None:
            return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()
        value = [message.model_dump() for message in self.messages or ()]
        return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()

    @property
    def request_sha256(self) -> str:
        """The hash of what is asked: the canonical line without ``id`` and ``n_tokens``."""
        value = {k: v for k, v in self.line_value().items() if k not in {"id", "n_tokens"}}
        return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class GenerationParams:
    """What every request of a run shares."""

    max_tokens: int
    seed: int
    logprobs: int | None
    model: str | None


def request_body(record: PromptRecord, params: GenerationParams) -> tuple[str, dict[str, Any]]:
    """The endpoint and the exact body of the request a line makes: greedy, seeded, one choice,
    token ids returned; never a chat template or any of its options."""
    body: dict[str, Any] = {
        "max_tokens": params.max_tokens,
        "temperature": 0,
        "seed": params.seed,
        "n": 1,
        "stream": False,
        "return_token_ids": True,
    }
    if params.model is not None:
        body["model"] = params.model
    if record.stop is not None:
        body["stop"] = list(record.stop)
    if record.constraint is not None:
        body["structured_outputs"] = record.constraint.structured_outputs()
    if record.messages is not None:
        body["messages"] = [message.model_dump() for message in record.messages]
        if params.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = params.logprobs
        return CHAT_PATH, body
    body["prompt"] = record.prompt
    if params.logprobs is not None:
        body["logprobs"] = params.logprobs
    return COMPLETIONS_PATH, body


class Generation(Protocol):
    """What a server answered to one request (:class:`detserve.runtime.server.Completion`)."""

    @property
    def prompt_token_ids(self) -> tuple[int, ...]: ...
    @property
    def token_ids(self) -> tuple[int, ...]: ...
    @property
    def text(self) -> str: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def logprobs(self) -> tuple[Any, ...] | None: ...


#: sends one request: (endpoint, body) -> what the server answered
Send = Callable[[str, dict[str, Any]], Generation]


def preflight_constraints(
    send: Send, records: Sequence[PromptRecord], params: GenerationParams, source: str
) -> None:
    """Send each distinct constraint once, with ``max_tokens`` 1, before the first real request:
    a constraint the engine cannot compile (an unsupported JSON Schema feature, regex syntax or
    grammar) is refused now with the engine's own message, naming the line, as bad input (exit
    2), not discovered mid-run. ``source`` names the bundle's ``prompts.jsonl``."""
    probe = replace(params, max_tokens=1, logprobs=None)
    seen: set[str] = set()
    for line, record in enumerate(records, start=1):
        constraint = record.constraint
        if constraint is None or constraint.sha256 in seen:
            continue
        seen.add(constraint.sha256)
        path, body = request_body(record, probe)
        try:
            send(path, body)
        except RequestRefused as exc:
            if not 400 <= exc.status < 500 or exc.status in {401, 403, 404}:
                raise
            raise InputError(
                f"{source}:{line} ({record.id}): the engine refuses its {constraint.kind} "
                f"constraint (sha256 {constraint.sha256[:12]}): {exc.engine_message}",
                hint="change the constraint to what the pinned engine and backend support, "
                "then rebuild and re-pin the bundle",
            ) from exc


def generate(send: Send, record: PromptRecord, params: GenerationParams, where: str) -> Generation:
    """Send the request of one line and check the server rendered its prompt as pinned."""
    path, body = request_body(record, params)
    result = send(path, body)
    check_rendered(record, result, where)
    return result


def check_rendered(record: PromptRecord, result: Generation, where: str) -> None:
    """Raise unless the server's prompt has the length the pinned tokenizer (and template) give.

    The bundle recorded each prompt's length with the pinned tokenizer (and, for a chat, the
    pinned template); a server that tokenizes or renders differently is not serving the pins.
    """
    if len(result.prompt_token_ids) != record.n_tokens:
        if record.kind == "chat":
            what, pinned = "rendered and tokenized the chat", "pinned template and tokenizer give"
        else:
            what, pinned = "tokenized the prompt", "pinned tokenizer gives"
        raise PinMismatch(
            f"{where}: the server {what} into {len(result.prompt_token_ids)} tokens; the "
            f"{pinned} {record.n_tokens}",
            hint="the server does not use the pinned model's tokenizer or chat template",
        )


def sample_record(
    send: Send, index: int, record: PromptRecord, params: GenerationParams
) -> dict[str, Any]:
    """Make the request of one line and return its run-log sample; raise when the answer breaks
    a pin (a prompt tokenized or rendered otherwise) or the constraint."""
    path, body = request_body(record, params)
    result = send(path, body)
    where = f"sample {index} ({record.id}, {record.kind})"
    check_rendered(record, result, where)
    finish_reason = result.finish_reason or "unknown"
    constraint = record.constraint
    try:
        satisfied = None if constraint is None else constraint.satisfied_by(result.text)
    except ConstraintUncheckable as exc:
        raise ConstraintUncheckable(
            f"{where}: {exc.message}; no run log was written", hint=exc.hint
        ) from None
    if satisfied is False and finish_reason != "length":
        assert constraint is not None
        raise ConstraintViolated(
            f"{where}: the output violates its {constraint.kind} constraint "
            f"(sha256 {constraint.sha256[:12]}), finish_reason {finish_reason!r}; no run log "
            "was written",
            details=[f"output: {result.text[:200]!r}"],
            hint="an engine that does not enforce the pinned constraint is faulty; report it",
        )
    return {
        "constraint": None if constraint is None else constraint.kind,
        "constraint_satisfied": satisfied,
        "constraint_sha256": None if constraint is None else constraint.sha256,
        "finish_reason": finish_reason,
        "index": index,
        "kind": record.kind,
        "logprobs": (
            None if result.logprobs is None else [token.logprob for token in result.logprobs]
        ),
        "output_token_ids": list(result.token_ids),
        "prompt_id": record.id,
        "prompt_sha256": record.sha256,
        "prompt_token_ids": list(result.prompt_token_ids),
        "request_sha256": record.request_sha256,
        "text": result.text,
    }
