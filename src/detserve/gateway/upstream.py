"""What the engine answers, read into an exchange's output; the engine's refusals, in OpenAI's
error shape.

vLLM with ``return_token_ids`` puts the generated token ids in every choice and the prompt's
ids in the choice (a completion) or at the top level (a chat), on the first chunk of a stream;
a chat stream opens with a chunk that names the role and holds no token (and so no token ids).
An output is checked against its request's constraint when its line is made
(:mod:`~detserve.gateway.output_check`). Anything else is not an answer the gateway can record:
:meth:`Output.add_chunk` and :meth:`Output.add_answer` raise, and the gateway answers 502 (or
ends the stream with an error event and records what was streamed as incomplete). An output
that would not fit its transcript line is one of them (:mod:`~detserve.gateway.line_budget`):
vLLM may answer one (a long ``max_tokens`` of long tokens), but no record could hold it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError
from starlette.responses import JSONResponse

from detserve.gateway.admission import Refused
from detserve.gateway.line_budget import Usage
from detserve.gateway.output_check import check_output
from detserve.gateway.transcript_segments import Provenance
from detserve.runlog.models import MAX_LINE_BYTES, ExchangeRequest, FinishReason

#: what a recorded ``finish_reason`` may be: the line's own type
_FINISH_REASON: Final = TypeAdapter(FinishReason)

#: A server-sent event stream's line ends. A ``\\r`` that ends what has arrived waits for the
#: next bytes: it may be a ``\\r\\n`` cut in two.
_LINE_END: Final = re.compile(rb"\r\n|\r(?!\Z)|\n")


async def event_lines(
    chunks: AsyncIterable[bytes], *, limit: int = MAX_LINE_BYTES
) -> AsyncIterator[str]:
    """A server-sent event stream's lines, however the bytes arrive: each line ended by
    ``\\n``, ``\\r\\n`` or ``\\r``, decoded as UTF-8 once it is whole; a last line without
    its end is given too. A line may be long (vLLM's first chunk names every prompt token), but
    not longer than ``limit`` bytes, what a transcript line may hold. Raises ``ValueError``
    (``UnicodeDecodeError`` is one) for a line that is not UTF-8 or is too long."""
    pending = b""
    async for chunk in chunks:
        ended = pending.endswith(b"\r") or b"\n" in chunk or b"\r" in chunk
        pending += chunk
        if ended:  # else nothing ended here: no search through what waits
            *lines, pending = _LINE_END.split(pending)
            for line in lines:
                yield line.decode("utf-8")
        if len(pending) > limit:
            raise ValueError(f"the engine sent an event-stream line over {limit} bytes")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8")


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] = {},
) -> JSONResponse:
    """A refusal in OpenAI's error shape."""
    body = Refused(param, message, status=status, code=code).body()
    return JSONResponse(body, status, dict(headers))


@dataclass
class Output:
    """What the engine answered so far. A stream is vLLM's or it is refused chunk by chunk, before
    anything of the refused chunk is kept or sent: the prompt's token ids on the first chunk and
    never another set, token ids a line can hold and no more than ``max_tokens`` of them, a
    ``finish_reason`` a line can hold, nothing after the chunk that finishes the choice, and
    never more than the transcript line holds (``line_budget``, each field's cap): whatever was
    kept, and so sent, can always be recorded."""

    kind: str
    #: the request's budget: a stream past it is not vLLM's (None: unchecked here)
    max_tokens: int | None = None
    #: the bytes the output's values may take in its line, each field within its cap too
    #: (:func:`~detserve.gateway.line_budget.output_budget`; None: unchecked here)
    line_budget: int | None = None
    prompt_token_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    #: what the values above take of the line, counted as they came
    usage: Usage = field(default_factory=Usage)

    def add_chunk(self, chunk: Any) -> None:
        """One streamed chunk; raise ValueError when it is not what vLLM streams."""
        if self.finish_reason is not None:
            raise ValueError("a chunk after the one that finished the choice")
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list) or len(choices) != 1:
            raise ValueError("a chunk without exactly one choice")
        choice = choices[0]
        prompt = chunk.get("prompt_token_ids") or choice.get("prompt_token_ids")
        new_prompt: list[int] = []  # the prompt's ids, the first time they come
        if prompt:
            if self.prompt_token_ids and list(prompt) != self.prompt_token_ids:
                raise ValueError("the prompt's token ids changed mid-stream")
            prompt = _token_ids(prompt)
            if not self.prompt_token_ids:
                new_prompt = prompt
        elif not self.prompt_token_ids:
            raise ValueError("a chunk before the prompt's token ids (vLLM sends them first)")
        tokens = choice.get("token_ids")
        if tokens is None and self.kind == "chat" and _opens_a_chat(choice):
            tokens = []  # vLLM opens a chat stream with the role alone: no token yet
        if not isinstance(tokens, list):
            raise ValueError("a chunk without token_ids")
        tokens = _token_ids(tokens)
        if self.max_tokens is not None and len(self.token_ids) + len(tokens) > self.max_tokens:
            raise ValueError(f"more tokens than the request's max_tokens ({self.max_tokens})")
        # read whole before anything is kept: a chunk refused adds nothing to the output
        piece = choice.get("text") if self.kind == "completion" else choice["delta"].get("content")
        piece = _text(piece)
        finish_reason = _finish_reason(choice.get("finish_reason"))
        usage = self.usage.plus(piece, tokens, new_prompt)
        if self.line_budget is not None:
            usage.check(self.line_budget)  # the line could not hold the chunk: OutputTooLong
        if prompt:
            self.prompt_token_ids = prompt
        self.text.append(piece)
        self.token_ids.extend(tokens)
        self.finish_reason = finish_reason
        self.usage = usage

    def add_answer(self, data: Any) -> None:
        """A whole answer, read whole before anything is kept: token ids and a ``finish_reason``
        a line can hold, and no more than the line holds
        (:class:`~detserve.gateway.line_budget.OutputTooLong`)."""
        choice = data["choices"][0]
        prompt = _token_ids(choice.get("prompt_token_ids") or data["prompt_token_ids"])
        tokens = _token_ids(choice["token_ids"])
        text = choice["text"] if self.kind == "completion" else choice["message"]["content"]
        text = _text(text)
        finish_reason = _finish_reason(choice["finish_reason"] or "unknown")
        usage = Usage.of(text, tokens, prompt)
        if self.line_budget is not None:
            usage.check(self.line_budget)
        self.prompt_token_ids, self.token_ids, self.text = prompt, tokens, [text]
        self.finish_reason = finish_reason
        self.usage = usage

    def fields(self, request: ExchangeRequest, incomplete: str | None = None) -> dict[str, Any]:
        """The exchange line's fields for this output, its constraint checked."""
        finish_reason = None if incomplete is not None else self.finish_reason
        text = "".join(self.text)
        return {
            "constraint_check": check_output(request, text, finish_reason, incomplete),
            "finish_reason": finish_reason,
            "incomplete": incomplete,
            "output_token_ids": self.token_ids,
            "prompt_token_ids": self.prompt_token_ids,
            "text": text,
        }


@dataclass(frozen=True)
class Violation:
    """An output that violates its constraint, withheld from the client (502)."""

    provenance: Provenance

    def refusal(self) -> Refused:
        provenance = self.provenance
        return Refused(
            None,
            f"the engine's output violates the request's {provenance.constraint} constraint: the "
            "engine did not enforce it, so the output is withheld; it is recorded as exchange "
            f"{provenance.id} (GET /v1/provenance/{provenance.id})",
            status=502,
            code="constraint_violated",
        )

    def response(self) -> JSONResponse:
        return JSONResponse(self.refusal().body(), 502, self.provenance.headers())

    def event(self) -> str:
        """The error event's data, for a stream."""
        return json.dumps(self.refusal().body())


def _text(piece: Any) -> str:
    """A piece of the engine's text: a string that UTF-8 can hold (a lone surrogate, which
    JSON can spell, cannot be recorded or sent), or nothing; else ValueError or TypeError."""
    if piece is None:
        return ""
    if not isinstance(piece, str):
        raise TypeError("the engine's text is not a string")
    piece.encode("utf-8")  # UnicodeEncodeError, a ValueError, for a lone surrogate
    return piece


def _finish_reason(value: Any) -> str | None:
    """A ``finish_reason`` a line holds (``stop``, ``length``, ...), or None; else ValueError."""
    if value is None:
        return None
    try:
        return _FINISH_REASON.validate_python(value, strict=True)
    except ValidationError:
        raise ValueError("a finish_reason that is not 1 to 32 of a-z and _") from None


def _token_ids(ids: Any) -> list[int]:
    """Token ids a transcript line holds (integers from 0 to 2**31 - 1); else ValueError."""
    if not isinstance(ids, list) or not all(
        type(token) is int and 0 <= token < 2**31 for token in ids
    ):
        raise ValueError("token ids that are not integers from 0 to 2**31 - 1")
    return list(ids)


def _opens_a_chat(choice: Any) -> bool:
    delta = choice.get("delta")
    return (
        isinstance(delta, dict)
        and delta.get("role") == "assistant"
        and not delta.get("content")
        and choice.get("finish_reason") is None
    )


def error_event(message: str) -> str:
    """An error event's data (OpenAI's error shape), for a stream that cannot go on."""
    return json.dumps(Refused(None, message, status=500).body())


#: the most characters of an engine's error message passed on
MAX_ENGINE_MESSAGE: Final = 2000


def engine_refusal(status: int, content: bytes) -> JSONResponse:
    """The engine refused (a constraint it cannot compile, a prompt too long): its 4xx passes
    through in OpenAI's shape; anything else is the gateway's 502."""
    try:
        engine: Any = json.loads(content)
        message = engine.get("error", {}).get("message") or engine.get("message") or str(engine)
    except (ValueError, AttributeError, RecursionError):  # not JSON, or not vLLM's error
        message = content[:300].decode("utf-8", "replace")
    # the engine's words, bounded and encodable (a lone surrogate is no UTF-8)
    message = str(message)[:MAX_ENGINE_MESSAGE].encode("utf-8", "backslashreplace").decode()
    if 400 <= status < 500:
        return error_response(status, f"the engine refused the request: {message}")
    return error_response(502, f"the engine failed: HTTP {status}: {message}")
