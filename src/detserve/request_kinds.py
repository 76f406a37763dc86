"""Request kinds: what one bundle line asks of the server, and how it is sent and recorded.

One canonical form, used by bundles, sampling, run logs and replay. A line of ``prompts.jsonl``
is one :class:`PromptRecord`:

* a **completion**: ``{"id", "n_tokens", "prompt"}``, sent to ``/v1/completions``;
* a **chat**: ``{"id", "n_tokens", "messages": [{"role", "content"}, ...]}`` (roles ``system``,
  ``user``, ``assistant``), sent to ``/v1/chat/completions`` and rendered by the server with the
  chat template of the pinned snapshot; no line can supply or configure a template;

each optionally with ``stop`` strings and one ``constraint``: ``{"json_schema": "{...}"}`` (the
schema's JSON text: a string, so that its key order, which decides the order in which the engine
writes the fields, and its numbers' spellings stay its author's), ``{"regex": "..."}``,
``{"choice": ["...", ...]}`` or ``{"grammar": "..."}`` (Lark syntax), sent as vLLM's
``structured_outputs`` with the schema's text embedded as it is.

Invariants: a line is the RFC 8785 form of its record with absent fields left out (one form per
request, so the bundle's hash pins each request exactly; a schema's text is its own compact form,
:mod:`detserve.constraints`); a constraint is within the caps of :mod:`detserve.constraints` and
compiles when the line is parsed (a JSON Schema against its metaschema, its references inside
it; a regex by the ``regex`` package; a grammar by ``lark``), in the checker's child process
with a time limit (:mod:`detserve.constraint_check`), so a line that loads can be checked after
sampling and a constraint that would hang or reach out is bad input (exit 2);
:func:`sample_record` is the one place a request is made and turned into a run-log sample. An
output check that cannot finish in its limit is :class:`ConstraintUncheckable` (exit 2).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, Protocol

from pydantic import Field, model_validator

from detserve.canonical import MAX_EXACT_INTEGER, canonical_json
from detserve.constraint_check import CheckedKind, accepts, compile_problem
from detserve.constraints import (
    MAX_GRAMMAR_CHARS,
    MAX_REGEX_CHARS,
    ConstraintRefused,
    check_choices,
    check_schema_text,
    check_text,
)
from detserve.errors import (
    BundleError,
    ConstraintViolated,
    InputError,
    PinMismatch,
    RequestRefused,
)
from detserve.spelled_json import JSONText
from detserve.strict_model import StrictModel

MAX_PROMPT_BYTES: Final = 1 << 20
MAX_MESSAGES: Final = 1024
#: vLLM refuses more (its ``VLLM_MAX_STOP_STRINGS``, 4 by default in the pinned image, as OpenAI's
#: API documents "up to 4 sequences"): refused here, before anything is sent or recorded
MAX_STOP_STRINGS: Final = 4
COMPLETIONS_PATH: Final = "/v1/completions"
CHAT_PATH: Final = "/v1/chat/completions"

RequestKind = Literal["completion", "chat"]
ConstraintKind = Literal["json_schema", "regex", "choice", "grammar"]
#: The keys of a request that would supply or configure the chat template, or what vLLM renders
#: with it (tools, documents, the multimodal processor's options): refused by name in a bundle
#: line (:mod:`detserve.prompts`) and by the gateway (:mod:`detserve.gateway.admission`). The
#: one list: a key added here is refused by both.
TEMPLATE_OVERRIDES: Final = frozenset(
    {
        "chat_template",
        "chat_template_kwargs",
        "add_generation_prompt",
        "continue_final_message",
        "add_special_tokens",
        "documents",
        "mm_processor_kwargs",
        "tools",
    }
)


class Message(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_BYTES)


class ConstraintUncheckable(BundleError):
    """A constraint whose check of an output cannot finish (a regex that backtracks for ever, a
    grammar whose parse does not end in time)."""


def _compiled(kind: CheckedKind, argument: str) -> None:
    """Raise ValueError unless the constraint compiles (in the checker's child, within its
    time limit), so that a line that loads can be checked after sampling."""
    try:
        problem = _compile_problem(kind, argument)
    except TimeoutError as exc:
        raise ValueError(f"{kind} does not compile in time: {exc}") from None
    if problem is not None:
        what = {
            "json_schema": "json_schema is not a JSON Schema detserve can check",
            "grammar": "grammar is not a Lark grammar with a 'start' rule",
            "regex": "regex does not compile",
        }[kind]
        raise ValueError(f"{what}: {problem}")


@functools.lru_cache(maxsize=256)
def _compile_problem(kind: CheckedKind, argument: str) -> str | None:
    # one compile per distinct constraint: a bundle repeats them, bootstrap validates twice
    return compile_problem(kind, argument)


class Constraint(StrictModel):
    """Exactly one structured-output constraint, each argument within the caps of
    :mod:`detserve.constraints` (a schema as its JSON text: keys in its author's order, numbers
    as written, compact)."""

    json_schema: str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _schema_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("json_schema"), dict):
            raise ValueError(
                "json_schema is held as its JSON text (a string), so that its key order and "
                "numbers stay as written; rebuild the bundle with `detserve prompts bootstrap`"
            )
        return data

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
        try:
            if self.json_schema is not None:
                _compiled("json_schema", check_schema_text("json_schema", self.json_schema))
            elif self.regex is not None:
                _compiled("regex", check_text("regex", self.regex, MAX_REGEX_CHARS, "regex"))
            elif self.choice is not None:
                check_choices("choice", self.choice)
            elif self.grammar is not None:
                grammar = check_text("grammar", self.grammar, MAX_GRAMMAR_CHARS, "grammar")
                _compiled("grammar", grammar)
        except ConstraintRefused as exc:
            raise ValueError(exc.message) from None
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
        """The request's ``structured_outputs`` field (vLLM's ``StructuredOutputsParams``), a
        schema embedded as its text (:func:`~detserve.spelled_json.encode_body`)."""
        if self.json_schema is not None:
            return {"json": JSONText(self.json_schema)}
        if self.regex is not None:
            return {"regex": self.regex}
        if self.choice is not None:
            return {"choice": list(self.choice)}
        return {"grammar": self.grammar}

    def satisfied_by(self, text: str) -> bool:
        """detserve's own check: the JSON validates, the regex matches in full, the text is a
        choice, or the grammar (by ``lark``) parses the whole text. A check that cannot finish
        in its time limit (:mod:`detserve.constraint_check`) or fails in its library raises
        :class:`ConstraintUncheckable`."""
        if self.choice is not None:
            return text in self.choice
        kind: CheckedKind = self.kind  # type: ignore[assignment]
        argument = self.json_schema or self.regex or self.grammar
        assert argument is not None
        try:
            verdict, reason = accepts(kind, argument, text)
        except TimeoutError as exc:
            raise ConstraintUncheckable(
                f"the {kind} constraint did not finish checking a {len(text)}-character output: "
                f"{exc}",
                hint="a pattern that backtracks, or an ambiguous grammar (Earley parsing is "
                "cubic or worse), cannot be checked; write it otherwise",
            ) from None
        if verdict is None:
            raise ConstraintUncheckable(f"the {kind} constraint cannot be checked: {reason}")
        return verdict


class PromptRecord(StrictModel):
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
    token ids returned; never a chat template or any of its options. A schema is embedded as
    its text: the body's bytes are :func:`~detserve.spelled_json.encode_body`'s."""
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
    """What a server answered to one request (:class:`detserve.runtime.vllm_client.Completion`)."""

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
