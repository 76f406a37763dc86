"""A gateway client's request in its canonical form: the record a transcript's exchange holds.

What the gateway sends the engine is built from this record alone
(:func:`detserve.gateway.upstream_body.upstream_request`), so a replay sends the same bytes. A
constraint field (``response_format`` or ``structured_outputs``) is held as the JSON text that
was sent, key order and number spellings kept (:mod:`detserve.constraints`), which RFC 8785
writes as a string and cannot reorder: two requests that send different bytes never share a
request hash.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from detserve.constraints import (
    CONSTRAINT_FIELDS,
    MAX_CONSTRAINT_CHARS,
    SentConstraint,
    read_recorded,
)
from detserve.runlog.record_base import MAX_TEXT_CHARS, MAX_TOKENS, Record

StopString = tuple[Annotated[str, Field(min_length=1, max_length=256)], ...]
#: A constraint field's JSON text as sent (:mod:`detserve.constraints`).
ConstraintText = Annotated[str, Field(min_length=2, max_length=MAX_CONSTRAINT_CHARS)]


class ChatMessage(Record):
    """One message of a chat request."""

    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    """The message text."""

    role: Literal["system", "user", "assistant"]
    """Who says it."""


class ExchangeRequest(Record):
    """A client's request in its one canonical form: what decides the tokens, nothing else.

    What the gateway sends the engine is built from this record alone (the seed and the model
    are the header's), so a replay sends the same bytes; a constraint field is held as the JSON
    text that was sent, which canonical JSON cannot reorder. Its sha256 (of this object's
    canonical JSON, nulls included) is the request hash a gateway answer names: two requests
    that send different bytes never share it.
    """

    kind: Literal["completion", "chat"]
    """A completion of ``prompt``, or a chat of ``messages`` rendered by the pinned template."""

    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)]
    """The most output tokens asked for."""

    messages: Annotated[tuple[ChatMessage, ...], Field(min_length=1, max_length=1024)] | None
    """A chat's messages; null for a completion."""

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)] | None
    """A completion's prompt; null for a chat."""

    response_format: ConstraintText | None
    """OpenAI's ``response_format`` exactly as it was sent to the engine: its compact JSON text,
    keys in the client's order and numbers as the client spelled them (``{"type":"json_schema",
    "json_schema":{"name":...,"schema":{...}}}``, ``{"type":"json_object"}`` or
    ``{"type":"text"}``); null when not sent."""

    stop: Annotated[StopString, Field(min_length=1, max_length=16)] | None
    """Stop strings; null when none."""

    structured_outputs: ConstraintText | None
    """vLLM's ``structured_outputs`` exactly as it was sent to the engine, as its compact JSON
    text (one of ``json``, ``regex``, ``choice``, ``grammar``, ``json_object``); null when not
    sent."""

    @model_validator(mode="after")
    def _one_kind(self) -> ExchangeRequest:
        if (self.kind == "chat") != (self.messages is not None) or (self.messages is None) == (
            self.prompt is None
        ):
            raise ValueError("a completion holds a prompt and no messages; a chat the reverse")
        if self.response_format is not None and self.structured_outputs is not None:
            raise ValueError("a request sends response_format or structured_outputs, not both")
        for name in CONSTRAINT_FIELDS:
            text = getattr(self, name)
            if text is not None:
                read_recorded(name, text)  # a ConstraintRefused is a ValueError
        return self

    @property
    def sent_constraint(self) -> SentConstraint | None:
        """The constraint field that was sent, read; None when none was."""
        for name in CONSTRAINT_FIELDS:
            text = getattr(self, name)
            if text is not None:
                return read_recorded(name, text)
        return None

    @property
    def constraint(self) -> SentConstraint | None:
        """The constraint the output is held to; None when there is none (``response_format``
        ``text`` is none)."""
        sent = self.sent_constraint
        return sent if sent is not None and sent.kind is not None else None
