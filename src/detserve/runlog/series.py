"""A transcript's series: the segments one gateway run rotated into, and the hash chain across
them, checked whole.

A gateway run writes ``DIR/<transcript_id>.<segment:06d>.transcript.jsonl``; each segment's
header names the sha256 of the segment before it (``previous_sha256``; null for segment 0), and
every segment but the last is closed ``rotated``. :func:`validate_transcript_dir` reads every
segment of a directory completely (each one as :func:`~detserve.runlog.transcript.
validate_transcript` does: a segment that does not validate is a
:class:`~detserve.errors.RunLogError`, exit 2), groups them by transcript id, and checks each
series: numbered 0 .. n-1 with none missing or repeated, each named for its header, each header
naming its predecessor's sha256 and holding the same pins and seed, every segment but the last
rotated, and only the last cut (a crash). Anything else is a :class:`ChainBroken` (exit 1)
naming the segment: a segment missing, reordered, renamed or substituted.

An empty file named as a segment holds no header, so it names no series and claims nothing: a
segment created when the disk was already full (its header never written). The gateway's start
passes ``on_empty`` and goes on without it (a warning); everywhere else it is refused as no
transcript. Emptying a written segment is seen like removing it: a following segment names its
sha256, a last one is anchored only by the sha256 ``serve`` printed.

What the chain cannot say: a series' last segment is named by no later one, so replacing it
with another valid last segment, or removing a whole series (a whole gateway run) from the
directory, is not seen here; the sha256 the gateway reports for each segment when it stops
anchors them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from detserve.errors import ChainBroken, RunLogError
from detserve.runlog.lines import LineParser
from detserve.runlog.models import TranscriptExchange, TranscriptHeader
from detserve.runlog.transcript import SUFFIX, TranscriptReader, TranscriptSummary

#: called for each exchange as it is read: the segment's path, its header, the exchange
ExchangeSink = Callable[[Path, TranscriptHeader, TranscriptExchange], None]


@dataclass(frozen=True)
class TranscriptSeries:
    """One gateway run's segments, in order, their chain intact."""

    transcript_id: str
    segments: tuple[TranscriptSummary, ...]

    @property
    def n_exchanges(self) -> int:
        return sum(segment.n_exchanges for segment in self.segments)

    @property
    def cut(self) -> bool:
        """Whether the last segment was cut (the gateway did not stop cleanly)."""
        return self.segments[-1].cut

    @property
    def closed(self) -> bool:
        """Whether the series ended with a clean stop (a last footer ``stopped``)."""
        footer = self.segments[-1].footer
        return footer is not None and footer.reason == "stopped"


def segment_name(header: TranscriptHeader) -> str:
    """The file name a segment is written under."""
    return f"{header.transcript_id}.{header.segment:06d}{SUFFIX}"


def segment_paths(directory: Path) -> list[Path]:
    """The transcript segments of ``directory`` (``*.transcript.jsonl``), by name."""
    try:
        names = sorted(entry.name for entry in os.scandir(directory))
    except OSError as exc:
        raise RunLogError(
            f"cannot list transcript directory {directory}: {exc.strerror or exc}"
        ) from exc
    return [directory / name for name in names if name.endswith(SUFFIX)]


def _is_empty(path: Path) -> bool:
    """Whether ``path`` is an empty regular file (not followed: a link is read, and refused)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False  # the reader names what is wrong with it
    return stat.S_ISREG(info.st_mode) and info.st_size == 0


def _read_segment(
    path: Path, parser: LineParser, on_exchange: ExchangeSink | None
) -> TranscriptSummary:
    with TranscriptReader(path, parser=parser, allow_cut=True) as reader:
        header = reader.header
        for _, exchange in reader.lines():
            if on_exchange is not None:
                on_exchange(path, header, exchange)
        return reader.summary()


def _check_series(transcript_id: str, segments: list[TranscriptSummary]) -> TranscriptSeries:
    segments.sort(key=lambda summary: (summary.header.segment, summary.path.name))
    first = segments[0].header
    previous: TranscriptSummary | None = None
    for position, summary in enumerate(segments):
        header, path = summary.header, summary.path
        if header.segment != position:
            if previous is not None and header.segment == previous.header.segment:
                raise ChainBroken(
                    f"{path}: segment {header.segment} of transcript {transcript_id} twice: "
                    f"here and in {previous.path}"
                )
            raise ChainBroken(
                f"{path.parent}: segment {position} of transcript {transcript_id} is "
                f"missing: the next one found is segment {header.segment}, {path.name}"
            )
        if path.name != segment_name(header):
            raise ChainBroken(
                f"{path}: its header says segment {header.segment} of transcript "
                f"{transcript_id}, so it is named {segment_name(header)}: renamed or reordered"
            )
        expected = None if previous is None else previous.sha256
        if header.previous_sha256 != expected:
            raise ChainBroken(
                f"{path}: the chain is broken: its header names the previous segment's sha256 "
                f"{header.previous_sha256}, and "
                + (
                    "segment 0 names none"
                    if previous is None
                    else f"the previous segment {previous.path.name} has sha256 {expected}"
                ),
                hint="a segment was substituted, changed or reordered after it was written",
            )
        if (header.pins, header.seed) != (first.pins, first.seed):
            raise ChainBroken(
                f"{path}: other pins or seed than segment 0 of transcript {transcript_id}"
            )
        if previous is not None and (
            previous.footer is None or previous.footer.reason != "rotated"
        ):
            state = "was cut" if previous.footer is None else "was closed 'stopped'"
            raise ChainBroken(
                f"{previous.path}: {state}, yet segment {header.segment} follows it ({path.name})"
            )
        previous = summary
    assert previous is not None
    if previous.footer is not None and previous.footer.reason == "rotated":
        raise ChainBroken(
            f"{previous.path}: closed 'rotated', but segment {previous.header.segment + 1} of "
            f"transcript {transcript_id} is missing"
        )
    return TranscriptSeries(transcript_id, tuple(segments))


def validate_transcript_dir(
    directory: Path,
    *,
    allow_cut: bool = False,
    on_exchange: ExchangeSink | None = None,
    on_empty: Callable[[Path], None] | None = None,
) -> list[TranscriptSeries]:
    """Read every segment of ``directory`` completely and check every series' chain; return
    the series by transcript id. ``on_exchange`` sees each exchange as it is read (act on them
    only once this returns). A cut last segment raises unless ``allow_cut``. An empty segment
    file is given to ``on_empty`` and skipped, or, without it, refused."""
    directory = Path(directory)
    parser = LineParser()
    by_id: dict[str, list[TranscriptSummary]] = {}
    for path in segment_paths(directory):
        if on_empty is not None and _is_empty(path):
            on_empty(path)
            continue
        summary = _read_segment(path, parser, on_exchange)
        by_id.setdefault(summary.header.transcript_id, []).append(summary)
    series = [_check_series(key, segments) for key, segments in sorted(by_id.items())]
    if not allow_cut:
        for one in series:
            if one.cut:
                last = one.segments[-1]
                raise RunLogError(
                    f"{last.path}: cut after {last.n_exchanges} exchanges: no footer (the "
                    "gateway did not stop cleanly)",
                    hint="every exchange before the cut is valid; accept it with --allow-cut",
                )
    return series
