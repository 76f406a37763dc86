"""The gateway's transcript: segments of the run-log family, rotated, and the provenance index.

This is a run-log writer (:class:`~detserve.runlog.transcript.TranscriptWriter`), not a second
format. Segments are ``DIR/<transcript_id>.<segment>.transcript.jsonl``; each header names the
previous segment's sha256, so the chain can be checked. A segment is rotated after
``rotate_exchanges`` exchanges (never, by default) and closed when the gateway stops.

Every exchange's provenance (its id, the pins' digest, the request's and the output's sha256,
its constraint check, where it is recorded) is kept in memory, so that ``GET /v1/provenance/{id}``
answers for every exchange of this gateway run, and of the earlier runs whose segments are in the
directory: those are read and checked completely when the gateway starts (:func:`index_earlier`;
fail closed: a segment that does not validate, or a broken chain, and the gateway does not
start; an empty segment file, which claims nothing, is skipped and named in
:attr:`EarlierExchanges.ignored`). A record is added only once its line is on disk. Start-up
cost: docs/performance.md, "The gateway's provenance index".

The directory is the clients' prompts: it is created ``0700`` and each segment ``0600``; an
existing directory that another user owns, or that its group or others may enter, is refused
(:func:`check_transcript_dir`), never silently tightened: what others could read before is the
operator's to judge.

A rotation that fails (a full disk) fails no answer: the exchange that triggered it is on disk,
so its answer is given; the segment is left cut (its footer withdrawn, or never written) and the
transcript is :attr:`Transcript.broken`, so the gateway answers nothing more (503).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from detserve.canonical import canonical_bytes
from detserve.errors import DetserveError, EnvironmentFault, RunLogError, UnsafeOutputError
from detserve.runlog.models import (
    EnginePins,
    ExchangeRequest,
    TranscriptExchange,
    TranscriptHeader,
)
from detserve.runlog.series import TranscriptSeries, segment_name, validate_transcript_dir
from detserve.runlog.transcript import (
    LineRecord,
    TranscriptWriter,
    output_sha256,
    request_sha256,
    written_digests,
)


@dataclass(frozen=True)
class Provenance:
    """What an answer carries: enough to find its record and check it."""

    id: str
    pins_sha256: str
    request_sha256: str
    output_sha256: str
    transcript: Path
    segment: int
    index: int
    incomplete: str | None
    #: what the client was sent of the output (:attr:`TranscriptExchange.delivery`)
    delivery: str
    #: the request's constraint kind, or None
    constraint: str | None
    #: the output checked against it (:mod:`~detserve.gateway.output_check`), or None
    constraint_check: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "pins_sha256": self.pins_sha256,
            "request_sha256": self.request_sha256,
            "output_sha256": self.output_sha256,
            "transcript": self.transcript.name,
            "segment": self.segment,
            "index": self.index,
            "complete": self.incomplete is None,
            "incomplete": self.incomplete,
            "delivery": self.delivery,
            "constraint": self.constraint,
            "constraint_check": self.constraint_check,
        }

    def headers(self) -> dict[str, str]:
        headers = {
            "X-Detserve-Id": self.id,
            "X-Detserve-Pins-Sha256": self.pins_sha256,
            "X-Detserve-Request-Sha256": self.request_sha256,
            "X-Detserve-Output-Sha256": self.output_sha256,
        }
        if self.constraint_check is not None:
            headers["X-Detserve-Constraint-Check"] = self.constraint_check
        return headers


def provenance_of(
    exchange: TranscriptExchange,
    path: Path,
    segment: int,
    pins_sha256: str,
    *,
    digests: tuple[str, str] | None = None,
) -> Provenance:
    """An exchange's provenance, computed from its line alone (and where the line is);
    ``digests``: its request's and output's sha256, already known (:func:`written_digests`)."""
    constraint = exchange.request.constraint
    if digests is None:
        digests = (
            request_sha256(exchange.request),
            output_sha256(exchange.output_token_ids, exchange.text),
        )
    return Provenance(
        id=exchange.id,
        pins_sha256=pins_sha256,
        request_sha256=digests[0],
        output_sha256=digests[1],
        transcript=path,
        segment=segment,
        index=exchange.index,
        incomplete=exchange.incomplete,
        delivery=exchange.delivery,
        constraint=None if constraint is None else constraint.kind,
        constraint_check=exchange.constraint_check,
    )


def new_exchange_id() -> str:
    return uuid.uuid4().hex


def pins_sha256_of(pins: EnginePins, seed: int) -> str:
    """The pins' digest an answer names: sha256 of ``{"pins": ..., "seed": ...}`` in canonical
    JSON."""
    document = {"pins": pins.model_dump(mode="json"), "seed": seed}
    return hashlib.sha256(canonical_bytes(document)[:-1]).hexdigest()


@dataclass(frozen=True)
class EarlierExchanges:
    """The exchanges of earlier gateway runs in a transcript directory, by provenance id."""

    index: Mapping[str, Provenance]
    series: tuple[TranscriptSeries, ...]
    #: empty segment files skipped (their header was never written: a full disk)
    ignored: tuple[Path, ...] = ()


def check_transcript_dir(directory: Path, *, create: bool = False) -> None:
    """Refuse a transcript directory another user owns or others may enter; with ``create``,
    make a missing one ``0700`` (its parents as the umask says)."""
    directory = Path(directory)
    if create:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise UnsafeOutputError(
                f"cannot create transcript directory {directory}: {exc.strerror or exc}"
            ) from exc
    try:
        info = directory.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsafeOutputError(
            f"cannot check transcript directory {directory}: {exc.strerror or exc}"
        ) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeOutputError(f"--transcript-dir {directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeOutputError(
            f"--transcript-dir {directory} belongs to another user (uid {info.st_uid}): the "
            "transcripts hold the clients' prompts",
            hint="give a directory of your own",
        )
    if info.st_mode & 0o077:
        raise UnsafeOutputError(
            f"--transcript-dir {directory} is open to others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): the transcripts hold the clients' prompts",
            hint=f"check who could read it, then `chmod 700 {directory}`",
        )


def index_earlier(directory: Path) -> EarlierExchanges:
    """Read and check every segment already in ``directory`` (each line, each footer, the chain
    of every series: :func:`~detserve.runlog.series.validate_transcript_dir`) and index their
    exchanges. Fail closed: any segment that does not validate raises
    :class:`~detserve.errors.RunLogError` (exit 2) and a broken chain
    :class:`~detserve.errors.ChainBroken` (exit 1), naming it, and nothing is served; only a
    series' last segment may be cut (a gateway that crashed), and is indexed up to its cut.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return EarlierExchanges({}, ())
    check_transcript_dir(directory)
    index: dict[str, Provenance] = {}
    ignored: list[Path] = []
    digests: dict[Path, str] = {}

    def add(path: Path, header: TranscriptHeader, exchange: TranscriptExchange) -> None:
        seen = index.get(exchange.id)
        if seen is not None:
            raise RunLogError(
                f"{path}: exchange {exchange.index} has the id {exchange.id} of exchange "
                f"{seen.index} of {seen.transcript}: an id names one exchange"
            )
        if path not in digests:
            digests[path] = pins_sha256_of(header.pins, header.seed)
        index[exchange.id] = provenance_of(exchange, path, header.segment, digests[path])

    series = validate_transcript_dir(
        directory, allow_cut=True, on_exchange=add, on_empty=ignored.append
    )
    return EarlierExchanges(index, tuple(series), tuple(ignored))


class Transcript:
    """The gateway run's segments and provenance index (thread-safe); ``on_line`` is told of
    every line of every segment once it is on disk (:class:`TranscriptWriter`)."""

    def __init__(
        self,
        directory: Path,
        header: TranscriptHeader,
        *,
        pins_sha256: str,
        rotate_exchanges: int | None = None,
        earlier: EarlierExchanges | None = None,
        on_line: Callable[[LineRecord, float], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._on_line = on_line
        self.pins_sha256 = pins_sha256
        self.rotate_exchanges = rotate_exchanges
        self._template = header
        self._lock = threading.Lock()
        if earlier is None:
            earlier = index_earlier(self.directory)
        check_transcript_dir(self.directory, create=True)
        #: what the directory held when this run started (its series, validated)
        self.earlier = earlier
        self._index: dict[str, Provenance] = dict(earlier.index)
        self.closed_segments: list[tuple[Path, str]] = []
        #: why no more can be recorded, beyond the writer's own fault (a failed rotation)
        self._fault: str | None = None
        self._writer = self._open(0, None)

    def _open(self, segment: int, previous: str | None) -> TranscriptWriter:
        header = self._template.model_copy(update={"segment": segment, "previous_sha256": previous})
        return TranscriptWriter(
            self.directory / segment_name(header), header, on_line=self._on_line
        )

    @property
    def path(self) -> Path:
        return self._writer.path

    @property
    def broken(self) -> str | None:
        """Why nothing more can be recorded, or None."""
        if self._fault is not None:
            return self._fault
        writer = self._writer
        fault = writer.broken
        # the segment removed or replaced (a stat): nothing written now would be found
        return writer.unreachable() if fault is None else fault.message

    def record(
        self,
        exchange_id: str,
        request: ExchangeRequest,
        fields: Mapping[str, Any],
    ) -> Provenance:
        """Append one exchange, synced to disk; return its provenance. Raises
        :class:`~detserve.errors.EnvironmentFault` when it cannot be written. A rotation that
        fails after the line is on disk does not raise: the exchange is recorded, and
        :attr:`broken` says why nothing more will be."""
        with self._lock:
            if self._fault is not None:
                raise EnvironmentFault(self._fault)
            writer = self._writer
            exchange: TranscriptExchange = writer.append(
                {**fields, "id": exchange_id, "request": request.model_dump(mode="json")}
            )
            provenance = provenance_of(
                exchange,
                writer.path,
                writer.header.segment,
                self.pins_sha256,
                digests=written_digests(exchange),  # the line's own, in C
            )
            self._index[exchange_id] = provenance
            if self.rotate_exchanges is not None and writer.n_exchanges >= self.rotate_exchanges:
                self._rotate()
            return provenance

    def _rotate(self) -> None:
        writer = self._writer
        try:
            sha256 = writer.close("rotated")  # a footer that cannot be written is cut off
            following = self._open(writer.header.segment + 1, sha256)  # removed if it fails
        except DetserveError as exc:
            why = f"the transcript could not be rotated: {exc.message}"
            try:
                writer.withdraw_footer(why)
            except DetserveError as withdrawn:
                why = f"{why}; {withdrawn.message}"
            self._fault = why
            return
        self.closed_segments.append((writer.path, sha256))
        self._writer = following

    def provenance(self, exchange_id: str) -> Provenance | None:
        with self._lock:
            return self._index.get(exchange_id)

    def close(self, reason: Literal["rotated", "stopped"] = "stopped") -> list[tuple[Path, str]]:
        """Close the current segment; return every segment closed (path, sha256)."""
        with self._lock:
            writer = self._writer
            sha256 = writer.close(reason)
            if not self.closed_segments or self.closed_segments[-1][0] != writer.path:
                self.closed_segments.append((writer.path, sha256))
            return list(self.closed_segments)
