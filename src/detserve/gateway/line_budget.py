"""What of its transcript line an exchange's output may take, counted as the line spells it.

An exchange is recorded as one line (:meth:`~detserve.gateway.transcript_segments.Transcript.
record`), at most :data:`~detserve.runlog.models.MAX_LINE_BYTES` long, newline included. The
line is three parts: the request's canonical JSON (admitted up to ``MAX_REQUEST_BYTES``), the
output's three values (``output_token_ids``, ``prompt_token_ids``, ``text``), and the rest,
:data:`FIXED_BYTES` at most. So the output's values may take :func:`output_budget` bytes, and
each field no more than its record's cap (``MAX_TEXT_CHARS`` characters of text, ``MAX_TOKENS``
ids in a list). An output past any of them is one no line can hold; the gateway must know it
before any of it is sent (a stream's chunk that would take the output past it is the engine's
failure: :meth:`~detserve.gateway.upstream.Output.add_chunk`), else the client holds tokens no
record holds.

A stream is counted as it comes (:meth:`Usage.plus`, in the time of the chunk, never of the
output), exactly as RFC 8785 writes the values (:mod:`detserve.canonical`): a string as UTF-8
between quotes, ``"`` and ``\\`` escaped to two bytes, ``\\b \\f \\n \\r \\t`` to two, every other
character below U+0020 to six (``\\u00XX``), nothing else escaped; a list of token ids as their
decimal digits, a comma between two, between brackets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from detserve.runlog.models import MAX_LINE_BYTES, MAX_TEXT_CHARS, MAX_TOKENS

#: The most bytes of an exchange's line besides its request's value and its output's three
#: values: the braces, every key with its quotes, colon and comma, the newline, and the other
#: fields at their longest (``constraint_check`` ``"not_checked"``, ``delivery``
#: ``"undelivered"``, a ``finish_reason`` of 32 characters with ``incomplete`` null, which is
#: longer than the reverse, ``id``'s 32 hex digits, ``index`` 999999999, ``record``
#: ``"exchange"``). Measured, not guessed: tests/unit/test_gateway_line_budget.py enumerates
#: every combination the sequence rules allow and finds this the longest, and writes a line with
#: it and an output at the budget: exactly ``MAX_LINE_BYTES``.
FIXED_BYTES: Final = 266


def output_budget(request_bytes: int) -> int:
    """The bytes an output's three values may take in the line of a request whose canonical JSON
    is ``request_bytes`` long."""
    return MAX_LINE_BYTES - FIXED_BYTES - request_bytes


class OutputTooLong(ValueError):
    """An output that no transcript line can hold: past its line's budget or a field's cap."""


#: ``json.dumps(text, ensure_ascii=False)``'s encoder, made once rather than for every piece
_STRING: Final = json.JSONEncoder(ensure_ascii=False)


def string_bytes(text: str) -> int:
    """The bytes of ``text`` as canonical JSON writes it, its quotes left out. Raises
    ``UnicodeEncodeError`` (a ValueError) for a lone surrogate, which it cannot write."""
    # the standard library's C encoder escapes exactly what RFC 8785 escapes in a string, and
    # spells each escape alike (tests/unit/test_gateway_line_budget.py compares with rfc8785)
    return len(_STRING.encode(text).encode("utf-8")) - 2


def digits(ids: Sequence[int]) -> int:
    """The decimal digits of ``ids`` (token ids: none negative)."""
    return sum(len(str(token)) for token in ids)


def _array(count: int, digit_count: int) -> int:
    return 2 + digit_count + max(count - 1, 0)


@dataclass(frozen=True)
class Usage:
    """What an output's values take of its line, and of each field's cap."""

    text_chars: int = 0
    #: the text's bytes as the line writes them, its quotes left out
    text_bytes: int = 0
    tokens: int = 0
    token_digits: int = 0
    prompt_tokens: int = 0
    prompt_digits: int = 0

    @classmethod
    def of(cls, text: str, token_ids: Sequence[int], prompt_token_ids: Sequence[int]) -> Usage:
        """A whole output's."""
        return cls().plus(text, token_ids, prompt_token_ids)

    @property
    def line_bytes(self) -> int:
        """The bytes of the three values as the line writes them."""
        return (
            2
            + self.text_bytes
            + _array(self.tokens, self.token_digits)
            + _array(self.prompt_tokens, self.prompt_digits)
        )

    def plus(self, piece: str, tokens: Sequence[int], prompt: Sequence[int] = ()) -> Usage:
        """This usage with ``piece`` of text and ``tokens`` added, and ``prompt``: the prompt's
        ids, once (a stream repeats them, they are counted the first time)."""
        return Usage(
            text_chars=self.text_chars + len(piece),
            text_bytes=self.text_bytes + string_bytes(piece),
            tokens=self.tokens + len(tokens),
            token_digits=self.token_digits + digits(tokens),
            prompt_tokens=self.prompt_tokens + len(prompt),
            prompt_digits=self.prompt_digits + digits(prompt),
        )

    def check(self, budget: int) -> None:
        """Raise :class:`OutputTooLong` unless every field is within its cap and the values
        within ``budget`` bytes."""
        if self.text_chars > MAX_TEXT_CHARS:
            raise OutputTooLong(
                f"the output's text would be {self.text_chars} characters: a transcript line "
                f"holds at most {MAX_TEXT_CHARS}"
            )
        for name, count in (("output", self.tokens), ("prompt", self.prompt_tokens)):
            if count > MAX_TOKENS:
                raise OutputTooLong(
                    f"the {name} would be {count} tokens: a transcript line holds at most "
                    f"{MAX_TOKENS}"
                )
        if self.line_bytes > budget:
            raise OutputTooLong(
                f"the output would take {self.line_bytes} bytes of its transcript line, which "
                f"has room for {budget} beside the request: it could not be recorded"
            )
