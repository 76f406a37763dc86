"""Directories of transcript segments and their chain (docs/spec/run-log.md section 7), and the
comparison of two run logs or two segments (sections 4 and 8); part of the independent checker
(``scripts/spec_check.py``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

import rfc8785

from spec_check_lines import (
    Refused,
    RunLog,
    Segment,
    run_log_samples,
    segment_exchanges,
    verify_segment,
)

SUFFIX = ".transcript.jsonl"


def verify_directory(directory: Path, *, allow_cut: bool) -> str:
    """Section 7.1: ``valid`` or ``cut``, or :class:`Refused`."""
    names = sorted(
        (e.name for e in os.scandir(directory) if e.name.endswith(SUFFIX)),
        key=lambda name: name.encode("utf-8"),
    )
    segments = []
    for name in names:  # [chain.read]: every segment verified before any chain
        try:
            segments.append(verify_segment(directory / name, allow_cut=True))
        except OSError as exc:
            raise Refused("chain.read", f"{directory / name}: {exc}") from None
    series: dict[str, list[Segment]] = {}
    for segment in segments:
        series.setdefault(segment.header["transcript_id"], []).append(segment)
    broken = ("chain-broken", 1)
    cut = []
    for transcript_id in sorted(series):
        ordered = sorted(series[transcript_id], key=lambda s: (s.header["segment"], s.path.name))
        first = ordered[0].header
        for position, segment in enumerate(ordered):
            header = segment.header
            if header["segment"] != position:
                raise Refused(
                    "chain.number",
                    f"{segment.path}: segment {header['segment']} at position {position}",
                    *broken,
                )
            if segment.path.name != f"{transcript_id}.{header['segment']:06d}{SUFFIX}":
                raise Refused("chain.name", f"{segment.path}: not named after its header", *broken)
            previous = ordered[position - 1] if position else None
            if header["previous_sha256"] != (previous.sha256 if previous else None):
                raise Refused("chain.previous", f"{segment.path}: previous_sha256", *broken)
            if (header["pins"], header["seed"]) != (first["pins"], first["seed"]):
                raise Refused("chain.pins", f"{segment.path}: other pins or seed", *broken)
            if previous is not None and (previous.footer or {}).get("reason") != "rotated":
                raise Refused("chain.rotated", f"{previous.path}: not closed 'rotated'", *broken)
        last = ordered[-1]
        if last.footer is not None and last.footer["reason"] == "rotated":
            raise Refused("chain.last", f"{last.path}: closed 'rotated', and is last", *broken)
        if last.cut:
            cut.append(last)
    if cut and not allow_cut:
        raise Refused("segment.cut", f"{cut[0].path}: the last segment is cut")
    return "cut" if cut else "valid"


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, item in value.items():
        if isinstance(item, dict):
            flat.update(_flatten(item, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = item
    return flat


def _header_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """[pair.header], [replay.header]: every member, by dotted path, whose values differ."""
    flat_a, flat_b = _flatten(a), _flatten(b)
    missing = object()
    return sorted(
        n for n in flat_a.keys() | flat_b.keys() if flat_a.get(n, missing) != flat_b.get(n, missing)
    )


def _is_transcript(path: Path) -> bool:
    """[pair.usage]: whether the first line, parsed as JSON, is a ``transcript`` record."""
    with path.open("rb") as handle:
        first = handle.readline(8 * 1024 * 1024 + 1)
    try:
        value = json.loads(first)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and value.get("record") == "transcript"


Lines = Iterator[tuple[bytes, dict[str, Any]]]


def _count(a: Lines, b: Lines, key: Any) -> tuple[int, int, int, int]:
    """Pairs by position: (differing requests, unpaired, divergent, incomplete in A)."""
    mismatched = unpaired = divergent = incomplete = 0
    for entry_a, entry_b in zip_longest(a, b):
        if entry_a is not None:
            incomplete += entry_a[1].get("incomplete") is not None
        if entry_a is None or entry_b is None:
            unpaired += 1
        elif entry_a[0] == entry_b[0]:
            continue
        elif key(entry_a[1]) != key(entry_b[1]):
            mismatched += 1
        else:
            divergent += 1
    return mismatched, unpaired, divergent, incomplete


def _request_key(exchange: dict[str, Any]) -> tuple[Any, ...]:
    digest = hashlib.sha256(rfc8785.dumps(exchange["request"])).hexdigest()
    return (exchange["id"], digest, exchange["incomplete"])


def _sample_key(sample: dict[str, Any]) -> tuple[Any, ...]:
    return (sample["prompt_id"], sample["prompt_sha256"], sample["request_sha256"])


def compare(run_a: Path, run_b: Path) -> tuple[str, int, str | None]:
    """Sections 4 and 8: (verdict, exit, rule), or :class:`Refused` for an invalid input."""
    if run_a.resolve() == run_b.resolve() or run_a.samefile(run_b):
        raise Refused("pair.usage", "a file compared with itself", "usage", 2)
    kinds = {_is_transcript(run_a), _is_transcript(run_b)}
    if len(kinds) != 1:
        raise Refused("pair.usage", "a run log compared with a segment", "usage", 2)
    if kinds == {True}:
        seg_a, seg_b = Segment(run_a), Segment(run_b)
        counts = _count(
            segment_exchanges(seg_a, allow_cut=True),
            segment_exchanges(seg_b, allow_cut=True),
            _request_key,
        )
        headers = _header_differences(seg_a.header, seg_b.header)
        reason_a = seg_a.footer["reason"] if seg_a.footer else None
        reason_b = seg_b.footer["reason"] if seg_b.footer else None
        if reason_a != reason_b:
            headers.append("transcript-end.reason")
        if seg_a.sha256 == seg_b.sha256:
            if seg_a.cut or seg_b.cut:
                return "cut", 1, "replay.cut"
            return ("incomplete", 0, None) if counts[3] else ("identical", 0, None)
        prefix = "replay"
    else:
        log_a, log_b = RunLog(), RunLog()
        counts = _count(run_log_samples(run_a, log_a), run_log_samples(run_b, log_b), _sample_key)
        headers = _header_differences(log_a.header, log_b.header)
        if log_a.sha256 == log_b.sha256:
            return "identical", 0, None
        prefix = "pair"
    if headers:
        return "not-a-replay", 1, f"{prefix}.header"
    if counts[0] or counts[1]:
        return "not-a-replay", 1, f"{prefix}.request"
    if counts[2]:
        return "divergent", 1, f"{prefix}.divergent"
    raise AssertionError("two files whose lines all agree and whose sha256 differ")
