"""Reading a run log: one line at a time, each checked, in bounded memory whatever its length.

Checks, in order, for every line: at most :data:`~detserve.runlog.models.MAX_LINE_BYTES` (a
longer line is refused without reading it into memory), the line itself
(:class:`~detserve.runlog.lines.LineParser`), then the rules across lines
(:mod:`detserve.runlog.sequence`) and nothing after the footer. Every failure is a
:class:`~detserve.errors.RunLogError` naming the file and the line; a sample must not be acted
on before the footer was checked.

Two logs read in lock-step with one :class:`~detserve.runlog.lines.LineParser` validate the
lines they share once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from detserve.errors import EvidenceChanged, RunLogError
from detserve.fileio import MAX_RUN_LOG_BYTES, open_input
from detserve.runlog.lines import LineFile, LineParser, LineReader
from detserve.runlog.models import (
    RunLogFooter,
    RunLogHeader,
    RunLogSample,
    TranscriptHeader,
)
from detserve.runlog.sequence import LineSequence


@dataclass(frozen=True)
class RunLogSummary:
    """A run log that was read to its end and found valid."""

    path: Path
    sha256: str
    header: RunLogHeader
    footer: RunLogFooter

    @property
    def n_samples(self) -> int:
        return self.header.n_samples


class RunLogReader(LineReader):
    """One run log, read and checked one line at a time; use it as a context manager.

    The header is read on entry. :meth:`lines` (or :meth:`samples`) yields the samples and,
    once it is exhausted, has checked the footer and the end of the file; only then are
    :attr:`footer` and :attr:`sha256` available.
    """

    what = "run log"
    too_long = "; refused without parsing it"
    too_long_hint = "no valid run-log line is this long"

    def __init__(
        self, path: Path, *, parser: LineParser | None = None, lines: LineFile | None = None
    ) -> None:
        super().__init__(path, parser=parser, lines=lines)
        self._sequence: LineSequence | None = None
        self._footer: RunLogFooter | None = None

    def _begin(self, first: bytes | None) -> None:
        if first is None:
            raise RunLogError(f"{self.path}: empty file: not a run log")
        record = self._parser.parse(first, self._where())
        if isinstance(record, TranscriptHeader):
            raise RunLogError(
                f"{self._where()}: a gateway transcript, not a sampled run log",
                hint="read it as a transcript (detserve.runlog.transcript)",
            )
        if not isinstance(record, RunLogHeader):
            raise RunLogError(
                f"{self._where()}: expected the header record, found a {record.record!r} record"
            )
        self._sequence = LineSequence(record)

    @property
    def header(self) -> RunLogHeader:
        if self._sequence is None:
            raise RuntimeError("RunLogReader is used outside its `with` block")
        return self._sequence.header

    @property
    def footer(self) -> RunLogFooter:
        if self._footer is None:
            raise RuntimeError("the footer is known once lines() is exhausted")
        return self._footer

    @property
    def sha256(self) -> str:
        """sha256 of the whole file, once :meth:`lines` is exhausted."""
        if self._footer is None:
            raise RuntimeError("the file hash is known once lines() is exhausted")
        return self._file.sha256()

    def summary(self) -> RunLogSummary:
        return RunLogSummary(self.path, self.sha256, self.header, self.footer)

    def lines(self) -> Iterator[tuple[bytes, RunLogSample]]:
        """Yield each sample with its exact line, then check the footer and the end of file."""
        sequence = self._sequence
        if sequence is None:
            raise RuntimeError("RunLogReader is used outside its `with` block")
        lines, parse = self._file, self._parser.parse
        while True:
            line = lines.next_line()
            if line is None:
                raise RunLogError(
                    f"{self.path}: truncated: no footer after {sequence.next_index} of "
                    f"{sequence.header.n_samples} samples"
                )
            where = lines.where
            record = parse(line, where)
            if isinstance(record, RunLogSample):
                sequence.sample(record, line, where)
                yield line, record
            elif isinstance(record, RunLogFooter):
                sequence.footer(record, where)
                footer = record
                break
            elif isinstance(record, RunLogHeader):
                raise RunLogError(f"{where}: a second header")
            else:
                raise RunLogError(f"{where}: a {record.record!r} record in a sampled run log")
        self._check_end()
        self._footer = footer

    def samples(self) -> Iterator[RunLogSample]:
        for _, sample in self.lines():
            yield sample


def read_run_log(
    path: Path,
) -> Iterator[RunLogHeader | RunLogSample | RunLogFooter]:
    """Yield the header, every sample and the footer of ``path``, each checked as it is read.

    A failure (a :class:`RunLogError`) can come at any line: act on the samples only once the
    footer was yielded.
    """
    with RunLogReader(path) as reader:
        yield reader.header
        yield from reader.samples()
        yield reader.footer


def require_same_bytes(path: Path, actual: str, expected: str | None, *, what: str) -> None:
    """Raise :class:`~detserve.errors.EvidenceChanged` unless ``actual``, the sha256 of what was
    just read of ``path``, is ``expected``, the sha256 it had when it was verified (None: nothing
    to compare)."""
    if expected is not None and actual != expected:
        raise EvidenceChanged(
            f"{what} {path} changed while detserve read it: it is not the file that was verified",
            details=[f"verified: sha256 {expected}", f"read now: sha256 {actual}"],
            hint="nothing may write the file while a command reads it; run the command again",
        )


def validate_run_log(path: Path, *, expected_sha256: str | None = None) -> RunLogSummary:
    """Read ``path`` to its end, checking everything; raise :class:`RunLogError` on any failure.

    ``expected_sha256``: the bytes must be those (hashed, then re-opened, the file could have
    been swapped in between): :class:`~detserve.errors.EvidenceChanged` (exit 1) otherwise.
    """
    with RunLogReader(path) as reader:
        for _ in reader.lines():
            pass
        summary = reader.summary()
    require_same_bytes(path, summary.sha256, expected_sha256, what="run log")
    return summary


def run_log_sha256(path: Path) -> str:
    """sha256 of the bytes of ``path`` (no validation: see :func:`validate_run_log`)."""
    with open_input(path, what="run log", cap=MAX_RUN_LOG_BYTES, error=RunLogError) as handle:
        try:
            return hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            raise RunLogError(f"cannot read run log {path}: {exc.strerror or exc}") from exc
