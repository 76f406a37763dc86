"""Which kind of line file a path holds, a sampled run log or a gateway transcript segment, and
the reader for it: :func:`open_log`, the one place that asks.

The kind is decided from the first line alone, before anything is validated (the specification's
[pair.usage]: a file is a transcript whether its header is valid or not): a line that begins as
a canonical transcript header does (``{"format":`` and a ``"record":"transcript"`` member) makes
the file a transcript; anything else, an unreadable first line included, makes it a run log,
whose reader then refuses what is not one by name (an empty file, another record, no JSON).

Invariant: the first line is read once. The reader :func:`open_log` returns hands out those very
bytes, checks them as its header on entry and hashes them with every other line, so the bytes
whose kind was decided are the bytes validated and hashed (evidence is read once).

A directory of segments is not a log: :func:`~detserve.runlog.series.validate_transcript_dir`
reads one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TypeAlias, TypeVar

from detserve.errors import RunLogError, UsageError
from detserve.runlog.lines import LineFile, LineParser
from detserve.runlog.reader import RunLogReader
from detserve.runlog.transcript import TranscriptReader

#: the reader of either kind of log
LogReader: TypeAlias = RunLogReader | TranscriptReader
Reader = TypeVar("Reader", RunLogReader, TranscriptReader)


def _transcript_header(first: bytes) -> bool:
    return first.startswith(b'{"format":') and b'"record":"transcript"' in first


def open_log(path: Path, *, parser: LineParser | None = None, allow_cut: bool = False) -> LogReader:
    """The reader for ``path``'s kind of log, its first line read and nothing validated yet;
    use it as a context manager, which checks the header on entry (``allow_cut``: a transcript
    may end without its footer, as :class:`TranscriptReader` says).

    Raises :class:`~detserve.errors.RunLogError` when the file cannot be opened or read.
    """
    lines = LineFile(path, what="run log")
    try:
        transcript = _transcript_header(lines.peek())
    except BaseException:
        lines.close()
        raise
    if transcript:
        return TranscriptReader(path, parser=parser, allow_cut=allow_cut, lines=lines)
    return RunLogReader(path, parser=parser, lines=lines)


def is_transcript(path: Path) -> bool:
    """Whether :func:`open_log` reads ``path`` as a transcript (nothing else is checked; a file
    that cannot be read is not one), for a command that hands the path on to the reading."""
    try:
        log = open_log(path)
    except RunLogError:
        return False
    log.close()
    return isinstance(log, TranscriptReader)


@contextlib.contextmanager
def open_pair(
    run_a: Path, run_b: Path, kind: type[Reader], *, refusal: str, allow_cut: bool = False
) -> Iterator[tuple[Reader, Reader]]:
    """Two logs of ``kind`` read with one parser (a line they share is validated once), their
    headers checked, for a comparison; closed when the block ends.

    Both kinds are decided before either log is validated: a log of another kind is a
    :class:`~detserve.errors.UsageError` saying ``refusal``, a file that cannot be read counting
    as a run log (and then raising its :class:`~detserve.errors.RunLogError`).
    """
    parser = LineParser()
    with contextlib.ExitStack() as stack:
        opened: list[LogReader | RunLogError] = []
        for path in (run_a, run_b):
            try:
                log = open_log(path, parser=parser, allow_cut=allow_cut)
            except RunLogError as exc:
                opened.append(exc)
            else:
                stack.callback(log.close)
                opened.append(log)
        if any(isinstance(one, TranscriptReader) != (kind is TranscriptReader) for one in opened):
            raise UsageError(refusal)
        logs: list[Reader] = []
        for one in opened:
            if isinstance(one, RunLogError):
                raise one
            if not isinstance(one, kind):  # decided above; says so to the type checker
                raise UsageError(refusal)
            logs.append(stack.enter_context(one))
        yield logs[0], logs[1]
