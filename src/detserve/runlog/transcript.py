"""Gateway transcripts: run logs of the exchanges clients asked for, appended as they complete.

A transcript segment is canonical JSON Lines of the run-log family (same line rules, same
:class:`~detserve.runlog.lines.LineParser`): a :class:`TranscriptHeader` (the server's pins and
seed), one :class:`TranscriptExchange` per answered request (its canonical request, prompt and
output tokens), and, when the segment is closed (rotated, or the gateway stopped), a
:class:`TranscriptFooter` with the exchange count and the sha256 of the header line and of the
exchange lines, as a sampled run log's footer has.

Unlike a sampled run log, a segment is written in place and grows: the number of exchanges is
not known in advance, and an answer must never exist without its record. So
:class:`TranscriptWriter` writes each line with one ``write`` and syncs it to disk before it
returns (the gateway answers only after that); a line that cannot be written whole is cut back
off, so the file always ends at a complete line, and a segment whose header cannot be written is
removed. A segment is created ``0600`` (the prompts are the clients' business). A gateway that
crashes leaves a segment without a footer, possibly ending inside a line a killed ``write`` did
not finish (that line's answer was never given: answers wait for the sync):
:func:`validate_transcript` reads such a segment up to its last complete line and says it was
cut and how many bytes of a torn line follow (refusing it unless ``allow_cut``).

The rules across a segment's lines are :class:`~detserve.runlog.transcript_sequence.
TranscriptSequence`'s, which the writer and the reader both enforce.

The request hash an answer names is :func:`request_sha256`; the output hash
:func:`output_sha256`; both are computed from the exchange line, by anyone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from detserve.canonical import canonical_bytes
from detserve.errors import EnvironmentFault, RunLogError
from detserve.fileio import check_outputs
from detserve.runlog.lines import LineFile, LineParser, LineReader, record_line
from detserve.runlog.models import (
    MAX_LINE_BYTES,
    AnyRecord,
    ExchangeRequest,
    TranscriptExchange,
    TranscriptFooter,
    TranscriptHeader,
)
from detserve.runlog.transcript_sequence import TranscriptSequence

#: the file name suffix of a transcript segment
SUFFIX = ".transcript.jsonl"
#: the kinds of line a writer writes
LineRecord = Literal["header", "exchange", "footer"]
#: An exchange's line as the standard library's C encoder drafts it: compact, keys sorted, UTF-8,
#: and the very escapes RFC 8785 writes (``"`` and ``\\``; ``\\b \\f \\n \\r \\t``; any other
#: control character as ``\\u00xx``). For what an exchange holds (strings, integers, null,
#: arrays, objects keyed by field names) that is ``rfc8785``'s line, in C; the writer's parse of
#: the draft checks it is, as a reader checks a line (:class:`~detserve.runlog.lines.LineParser`:
#: pydantic's line of the record, which is ``rfc8785``'s, and where they differ ``rfc8785``
#: itself; docs/performance.md, "The gateway's own time").
_DRAFT: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


def canonical_request(request: ExchangeRequest) -> bytes:
    """The request's canonical JSON (RFC 8785, nulls included, no newline), a constraint field
    as the JSON text that was sent (which RFC 8785 writes as a string, never reordered)."""
    return canonical_bytes(request.model_dump())[:-1]


def request_sha256(request: ExchangeRequest) -> str:
    """sha256 of :func:`canonical_request`: two requests that send different bytes differ."""
    return hashlib.sha256(canonical_request(request)).hexdigest()


def output_sha256(output_token_ids: Sequence[int], text: str) -> str:
    """sha256 of ``{"output_token_ids": [...], "text": "..."}`` in canonical JSON."""
    document = {"output_token_ids": list(output_token_ids), "text": text}
    return hashlib.sha256(canonical_bytes(document)[:-1]).hexdigest()


def written_digests(exchange: TranscriptExchange) -> tuple[str, str]:
    """:func:`request_sha256` and :func:`output_sha256` of an exchange that
    :meth:`TranscriptWriter.append` returned, drafted in C (:data:`_DRAFT`), not by rfc8785.

    The same digests: that exchange's line is the draft, which the writer checked is rfc8785's
    line (as a reader checks one), and a line parses one way only, so each value's draft in it
    (the request, the output ids, the text) is rfc8785's spelling of that value too. Not for an
    exchange read elsewhere: its line was never drafted.
    """
    request = _DRAFT.encode(exchange.request.model_dump()).encode("utf-8")
    output = {"output_token_ids": exchange.output_token_ids, "text": exchange.text}
    return (
        hashlib.sha256(request).hexdigest(),
        hashlib.sha256(_DRAFT.encode(output).encode("utf-8")).hexdigest(),
    )


class TranscriptWriter:
    """Append exchanges to a new transcript segment, each synced to disk before it returns.

    Thread-safe: one line at a time, in the order :meth:`append` is called. After a write fails
    (a full disk) the writer is broken: the partial line is cut off, and every later call raises.
    So is it when a synced line is in a file the segment's path no longer names (removed, or
    replaced: :meth:`unreachable`), since no reader would find that record.
    ``on_line`` is told of each line once it is on disk, with how long its ``fsync`` took.
    """

    def __init__(
        self,
        path: Path,
        header: TranscriptHeader,
        *,
        on_line: Callable[[LineRecord, float], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._on_line = on_line
        check_outputs([self.path], force=False)
        self._parser = LineParser()
        self._sequence = TranscriptSequence(header)
        self._file_sha256 = hashlib.sha256()
        self._lock = threading.Lock()
        self._broken: EnvironmentFault | None = None
        self._closed = False
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise EnvironmentFault(
                f"cannot create transcript {self.path}: {exc.strerror or exc}"
            ) from exc
        info = os.fstat(self._fd)
        #: the file written, as its path must keep naming it (:meth:`unreachable`)
        self._identity = (info.st_dev, info.st_ino)
        self._size = 0
        #: the size and digest before the footer, once one was written
        self._body_size: int | None = None
        self._body_sha256 = self._file_sha256
        try:
            self._emit(self._checked(header, f"{self.path}: header"), "header")
            _sync_directory(self.path.parent)
        except BaseException:
            # A segment without its header holds nothing and names nothing: it is not left for
            # the next start to stumble on (a full disk at rotation).
            os.close(self._fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise

    @property
    def header(self) -> TranscriptHeader:
        return self._sequence.header

    @property
    def n_exchanges(self) -> int:
        return self._sequence.next_index

    @property
    def broken(self) -> EnvironmentFault | None:
        """Why the writer can write no more, or None."""
        return self._broken

    def unreachable(self) -> str | None:
        """Why the segment's path no longer names the file written (removed, or replaced), or
        None: a line written then is on disk in a file nobody reads."""
        try:
            info = os.lstat(self.path)
        except OSError as exc:
            return f"transcript {self.path} is gone: {exc.strerror or exc}"
        if (info.st_dev, info.st_ino) != self._identity:
            return f"transcript {self.path} was replaced by another file"
        return None

    def _checked(self, record: Any, what: str) -> bytes:
        line = record_line(record)
        self._parsed(line, what)
        return line

    def _parsed(self, line: bytes, what: str) -> AnyRecord:
        if len(line) > MAX_LINE_BYTES:
            raise RunLogError(f"{what}: the line would be longer than {MAX_LINE_BYTES} bytes")
        return self._parser.parse(line, what)

    def _emit(self, line: bytes, record: LineRecord) -> None:
        try:
            written = 0
            while written < len(line):
                written += _write(self._fd, line[written:])
            began = time.perf_counter()
            os.fsync(self._fd)
            synced_s = time.perf_counter() - began
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._size)  # the file ends at its last complete line
                os.fsync(self._fd)
            except OSError:
                pass  # the reader refuses a partial last line anyway
            self._broken = EnvironmentFault(
                f"cannot write transcript {self.path}: {exc.strerror or exc}",
                hint="an answer is never given without its record: free space, then restart",
            )
            raise self._broken from exc
        unreachable = self.unreachable()
        if unreachable is not None:
            # synced, but into a file no path names: not a record anyone can read or check
            self._broken = EnvironmentFault(
                f"{unreachable}: the line written is in no file a reader can find",
                hint="an answer is never given without its record: restart the gateway",
            )
            raise self._broken
        self._size += len(line)
        self._file_sha256.update(line)
        if self._on_line is not None:
            self._on_line(record, synced_s)

    def append(self, fields: Mapping[str, Any]) -> TranscriptExchange:
        """Write the next exchange (``fields`` without ``index`` and ``record``); return it once
        it is on disk. Raises :class:`EnvironmentFault` when it cannot be written."""
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._closed:
                raise EnvironmentFault(f"transcript {self.path} is closed")
            where = f"{self.path}: exchange {self._sequence.next_index}"
            document = {**fields, "index": self._sequence.next_index, "record": "exchange"}
            line = _drafted_line(document, where)
            # The line is checked as every reader checks it, once: the schema, then its canonical
            # form (the record parsed back, written as rfc8785 writes it, must give these very
            # bytes). So a draft that is not rfc8785's line is refused, never written.
            record = self._parsed(line, where)
            if not isinstance(record, TranscriptExchange):
                raise RunLogError(f"{where}: not an exchange")
            self._sequence.check(record, where)  # before the write: a refused line is not written
            self._emit(line, "exchange")
            self._sequence.count(line)
            return record

    def close(self, reason: Literal["rotated", "stopped"]) -> str:
        """Write the footer and close the file; return the segment's sha256."""
        with self._lock:
            if self._closed:
                return self._file_sha256.hexdigest()
            self._closed = True
            try:
                if self._broken is None:
                    footer = self._sequence.expected_footer(reason)
                    body = (self._size, self._file_sha256.copy())
                    self._emit(self._checked(footer, f"{self.path}: footer"), "footer")
                    self._body_size, self._body_sha256 = body
            finally:
                os.close(self._fd)
            return self._file_sha256.hexdigest()

    def leave_cut(self) -> str:
        """Close the file without a footer (a replay of a cut segment is cut at the same
        place); return the segment's sha256."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)
            return self._file_sha256.hexdigest()

    def withdraw_footer(self, why: str) -> None:
        """Cut a closed segment's footer off again: it ends at its last exchange, as a crash
        leaves it (cut), and the writer is broken with ``why``.

        For a rotation whose next segment could not be opened: a footer ``rotated`` with no
        segment after it would read as a segment removed from the chain.
        """
        with self._lock:
            self._broken = EnvironmentFault(why)
            if self._body_size is None:
                return
            try:
                fd = os.open(self.path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, self._body_size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise EnvironmentFault(
                    f"cannot cut the footer off transcript {self.path}: {exc.strerror or exc}",
                    hint="it says 'rotated' and no segment follows it: its chain reads as broken",
                ) from exc
            self._body_size = None
            self._file_sha256 = self._body_sha256

    def __enter__(self) -> TranscriptWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close("stopped")


def _drafted_line(document: Mapping[str, Any], where: str) -> bytes:
    """``document``'s line as :data:`_DRAFT` writes it; a value no JSON text holds (a lone
    surrogate, a NaN, an object of another type) is a :class:`RunLogError`, as ``rfc8785``'s
    refusal of it is."""
    try:
        return _DRAFT.encode(document).encode("utf-8") + b"\n"
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise RunLogError(
            f"{where}: not representable as canonical JSON (RFC 8785): {exc}"
        ) from exc


def _write(fd: int, data: bytes) -> int:
    """One ``write(2)``; a seam for the full-disk tests."""
    return os.write(fd, data)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@dataclass(frozen=True)
class TranscriptSummary:
    """A transcript segment read to its end (or to its cut) and found valid."""

    path: Path
    sha256: str
    header: TranscriptHeader
    #: None when the segment was cut (no footer)
    footer: TranscriptFooter | None
    n_exchanges: int
    #: the bytes of a line a crash left unfinished after the last complete one (cut segments
    #: only; not in ``sha256``, which covers the complete lines)
    torn_bytes: int = 0

    @property
    def cut(self) -> bool:
        return self.footer is None


class TranscriptReader(LineReader):
    """One transcript segment, read and checked one line at a time (a context manager)."""

    what = "transcript"

    def __init__(
        self,
        path: Path,
        *,
        parser: LineParser | None = None,
        allow_cut: bool = False,
        lines: LineFile | None = None,
    ) -> None:
        super().__init__(path, parser=parser, lines=lines)
        self.allow_cut = allow_cut
        self._sequence: TranscriptSequence | None = None
        self._summary: TranscriptSummary | None = None
        self._torn_bytes = 0

    def _begin(self, first: bytes | None) -> None:
        if first is None:
            raise RunLogError(f"{self.path}: empty file: not a transcript")
        record = self._parser.parse(first, self._where())
        if not isinstance(record, TranscriptHeader):
            raise RunLogError(
                f"{self._where()}: expected a transcript header, found a {record.record!r} record"
            )
        self._sequence = TranscriptSequence(record)

    @property
    def header(self) -> TranscriptHeader:
        if self._sequence is None:
            raise RuntimeError("TranscriptReader is used outside its `with` block")
        return self._sequence.header

    def summary(self) -> TranscriptSummary:
        if self._summary is None:
            raise RuntimeError("the summary is known once lines() is exhausted")
        return self._summary

    def _next_line(self) -> bytes | None:
        try:
            return self._file.next_line()
        except RunLogError as exc:
            torn = self._torn_tail(exc)
            if torn is None:
                raise
            self._torn_bytes = torn
            return None

    def _torn_tail(self, error: RunLogError) -> int | None:
        """The length of a last line a crash left unfinished (no newline, within the line
        limit) after the header of a segment read with ``allow_cut``; None for any other fault
        (a read error, a line too long, a torn header), which is raised."""
        if not self.allow_cut or self._sequence is None or isinstance(error.__cause__, OSError):
            return None
        try:
            torn = self.path.stat().st_size - self._file.offset
        except OSError:
            return None
        # LineFile refuses a line over the limit before it can miss its newline
        return torn if 0 < torn <= MAX_LINE_BYTES else None

    def _cut(self, sequence: TranscriptSequence) -> None:
        if not self.allow_cut:
            raise RunLogError(
                f"{self.path}: cut after {sequence.next_index} exchanges: no footer (the gateway "
                "did not stop cleanly)",
                hint="every exchange before the cut is valid; accept it with --allow-cut",
            )
        self._summary = TranscriptSummary(
            self.path,
            self._file.sha256(),
            sequence.header,
            None,
            sequence.next_index,
            self._torn_bytes,
        )

    def lines(self) -> Iterator[tuple[bytes, TranscriptExchange]]:
        """Yield each exchange with its exact line, then check the footer and the end."""
        sequence = self._sequence
        if sequence is None:
            raise RuntimeError("TranscriptReader is used outside its `with` block")
        while True:
            line = self._next_line()
            if line is None:
                self._cut(sequence)
                return
            where = self._where()
            record = self._parser.parse(line, where)
            if isinstance(record, TranscriptExchange):
                sequence.exchange(record, line, where)
                yield line, record
            elif isinstance(record, TranscriptFooter):
                sequence.footer(record, where)
                footer = record
                break
            else:
                raise RunLogError(f"{where}: a {record.record!r} record in a transcript")
        self._check_end()
        self._summary = TranscriptSummary(
            self.path, self._file.sha256(), sequence.header, footer, sequence.next_index
        )


def validate_transcript(path: Path, *, allow_cut: bool = False) -> TranscriptSummary:
    """Read a segment to its end, checking everything; a cut segment raises unless allowed."""
    with TranscriptReader(path, allow_cut=allow_cut) as reader:
        for _ in reader.lines():
            pass
        return reader.summary()


def read_exchanges(path: Path, *, allow_cut: bool = False) -> list[TranscriptExchange]:
    """Every exchange of a valid segment (in memory: for replay and tests)."""
    with TranscriptReader(path, allow_cut=allow_cut) as reader:
        return [exchange for _, exchange in reader.lines()]
