"""The rules that span the lines of a transcript segment, which the writer and the reader both
enforce (the transcripts' counterpart of :mod:`~detserve.runlog.sequence`).

Exchanges follow the header with indices 0, 1, ... in order, each with at most its request's
``max_tokens`` output tokens; across an exchange's fields: a ``finish_reason`` exactly when it
is complete; a ``constraint_check`` exactly when its request has a constraint, ``cut`` exactly
when its generation was; ``delivered`` only for a complete output that did not violate its
constraint; ``withheld`` exactly for a violated one whose client was still there. The footer
holds the count and the sha256 of the exact header line and of the exact exchange lines.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from detserve.errors import RunLogError
from detserve.runlog.lines import record_line
from detserve.runlog.models import TranscriptExchange, TranscriptFooter, TranscriptHeader


class TranscriptSequence:
    """The rules across a segment's lines: order, the token budget, completeness, the footer."""

    def __init__(self, header: TranscriptHeader) -> None:
        self.header = header
        self.next_index = 0
        self.header_sha256 = hashlib.sha256(record_line(header)).hexdigest()
        self._exchanges_sha256 = hashlib.sha256()

    def exchange(self, exchange: TranscriptExchange, line: bytes, where: str) -> None:
        """Check the exchange against the lines before it, then count it."""
        self.check(exchange, where)
        self.count(line)

    def count(self, line: bytes) -> None:
        """Count a checked exchange's line."""
        self._exchanges_sha256.update(line)
        self.next_index += 1

    def check(self, exchange: TranscriptExchange, where: str) -> None:
        """Raise :class:`~detserve.errors.RunLogError` when the exchange cannot be the next."""
        if exchange.index != self.next_index:
            raise RunLogError(
                f"{where}: exchange index {exchange.index} out of order: expected {self.next_index}"
            )
        if len(exchange.output_token_ids) > exchange.request.max_tokens:
            raise RunLogError(
                f"{where}: {len(exchange.output_token_ids)} output tokens exceed the request's "
                f"max_tokens ({exchange.request.max_tokens})"
            )
        if (exchange.finish_reason is None) == (exchange.incomplete is None):
            raise RunLogError(
                f"{where}: an exchange has a finish_reason exactly when it is not incomplete"
            )
        check = exchange.constraint_check
        if (check is None) != (exchange.request.constraint is None):
            raise RunLogError(
                f"{where}: an exchange has a constraint_check exactly when its request has a "
                "constraint"
            )
        cut = exchange.incomplete is not None or exchange.finish_reason == "length"
        if (check == "cut" and not cut) or (check == "violated" and cut):
            raise RunLogError(
                f"{where}: constraint_check {check!r} with finish_reason "
                f"{exchange.finish_reason!r} and incomplete {exchange.incomplete!r}: an output "
                "is cut exactly when its generation was (max_tokens, or a stream that ended)"
            )
        delivery = exchange.delivery
        if delivery == "delivered" and (exchange.incomplete is not None or check == "violated"):
            raise RunLogError(
                f"{where}: delivery 'delivered' with incomplete {exchange.incomplete!r} and "
                f"constraint_check {check!r}: only a whole output within its constraint is "
                "delivered"
            )
        if (delivery == "withheld") != (check == "violated" and delivery != "undelivered"):
            raise RunLogError(
                f"{where}: delivery {delivery!r} with constraint_check {check!r}: an output is "
                "withheld exactly when it violates its constraint (unless the client was gone)"
            )

    def expected_footer(self, reason: Literal["rotated", "stopped"]) -> TranscriptFooter:
        return TranscriptFooter(
            n_exchanges=self.next_index,
            header_sha256=self.header_sha256,
            exchanges_sha256=self._exchanges_sha256.hexdigest(),
            reason=reason,
        )

    def footer(self, footer: TranscriptFooter, where: str) -> None:
        expected = self.expected_footer(footer.reason)
        if footer != expected:
            raise RunLogError(
                f"{where}: the footer does not match the lines above it",
                details=[f"footer:   {footer.model_dump()}", f"expected: {expected.model_dump()}"],
                hint="the transcript was changed after it was written",
            )
