"""The rules that span the lines of a run log, which the reader and the writer both enforce.

The header comes first; samples follow with indices 0 .. n_samples - 1 in order; each has
logprobs exactly when the header asks for them, one per output token, and at most
``max_tokens`` output tokens; the footer repeats ``n_samples`` and holds the sha256 of the exact
header line and of the exact bytes of all sample lines, so that truncation and change are
detected.
"""

from __future__ import annotations

import hashlib

from detserve.errors import RunLogError
from detserve.runlog.lines import record_line
from detserve.runlog.models import RunLogFooter, RunLogHeader, RunLogSample


class LineSequence:
    """The rules that span lines: order, counts, logprobs, and the footer's hash."""

    def __init__(self, header: RunLogHeader) -> None:
        self.header = header
        self.next_index = 0
        # The reader has checked the header line is canonical, so these are its exact bytes.
        self.header_sha256 = hashlib.sha256(record_line(header)).hexdigest()
        self._samples_sha256 = hashlib.sha256()

    def sample(self, sample: RunLogSample, line: bytes, where: str) -> None:
        header = self.header
        if sample.index != self.next_index:
            raise RunLogError(
                f"{where}: sample index {sample.index} out of order: expected {self.next_index}"
            )
        if self.next_index >= header.n_samples:
            raise RunLogError(
                f"{where}: more samples than the header's n_samples ({header.n_samples})"
            )
        n_output = len(sample.output_token_ids)
        if n_output > header.sampling.max_tokens:
            raise RunLogError(
                f"{where}: {n_output} output tokens exceed the header's max_tokens "
                f"({header.sampling.max_tokens})"
            )
        if sample.logprobs is None:
            if header.sampling.logprobs is not None:
                raise RunLogError(f"{where}: no logprobs, but the header requested them")
        elif header.sampling.logprobs is None:
            raise RunLogError(f"{where}: logprobs present, but the header did not request them")
        elif len(sample.logprobs) != n_output:
            raise RunLogError(
                f"{where}: {len(sample.logprobs)} logprobs for {n_output} output tokens"
            )
        constrained = (sample.constraint is not None, sample.constraint_sha256 is not None)
        if constrained != (sample.constraint_satisfied is not None,) * 2:
            raise RunLogError(
                f"{where}: constraint, constraint_sha256 and constraint_satisfied must be all "
                "set or all null"
            )
        if sample.constraint_satisfied is False and sample.finish_reason != "length":
            raise RunLogError(
                f"{where}: an output that violates its constraint is only a sample when it was "
                f"cut short (finish_reason 'length'), not {sample.finish_reason!r}"
            )
        self._samples_sha256.update(line)
        self.next_index += 1

    def expected_footer(self) -> RunLogFooter:
        return RunLogFooter(
            n_samples=self.header.n_samples,
            header_sha256=self.header_sha256,
            samples_sha256=self._samples_sha256.hexdigest(),
        )

    def footer(self, footer: RunLogFooter, where: str) -> None:
        if self.next_index != self.header.n_samples:
            raise RunLogError(
                f"{where}: footer after {self.next_index} samples; the header announces "
                f"{self.header.n_samples}"
            )
        if footer.n_samples != self.header.n_samples:
            raise RunLogError(
                f"{where}: the footer's n_samples ({footer.n_samples}) is not the header's "
                f"({self.header.n_samples})"
            )
        if footer.header_sha256 != self.header_sha256:
            raise RunLogError(
                f"{where}: the header line does not match the footer's hash",
                details=[f"footer: {footer.header_sha256}", f"header: {self.header_sha256}"],
                hint="the log was changed after it was written",
            )
        expected = self._samples_sha256.hexdigest()
        if footer.samples_sha256 != expected:
            raise RunLogError(
                f"{where}: the sample lines do not match the footer's hash",
                details=[f"footer: {footer.samples_sha256}", f"lines:  {expected}"],
                hint="the log was changed after it was written",
            )
