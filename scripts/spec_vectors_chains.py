"""Chains of transcript segments (docs/spec/run-log.md section 7): directories of segments with
their verdicts."""

from __future__ import annotations

from collections.abc import Callable

from spec_vectors_base import Record, VectorSet, sha
from spec_vectors_transcripts import RUN_1, RUN_2, changed, exchanges, segment, segment_header

HeaderChange = Callable[[Record], None]


def _series(
    transcript_id: str = RUN_1,
    *,
    sizes: tuple[int, ...] = (2, 3, 1),
    reasons: tuple[str | None, ...] = ("rotated", "rotated", "stopped"),
    changes: dict[int, HeaderChange] | None = None,
) -> list[tuple[str, bytes]]:
    """A series' segments as (file name, bytes), each header naming its predecessor's sha256
    as built (a change to a header is applied before the chain is computed on)."""
    records = exchanges()
    files: list[tuple[str, bytes]] = []
    previous: str | None = None
    start = 0
    for number, (size, reason) in enumerate(zip(sizes, reasons, strict=True)):
        header = segment_header(transcript_id, number, previous)
        if changes and number in changes:
            changes[number](header)
        data = b"".join(segment(header, records[start : start + size], reason))
        start += size
        files.append((f"{transcript_id}.{number:06d}.transcript.jsonl", data))
        previous = sha(data)
    return files


def _dir(
    vs: VectorSet,
    name: str,
    files: list[tuple[str, bytes]],
    verdict: str,
    code: int,
    rule: str | None,
    section: str,
    what: str,
    allow_cut: bool = False,
) -> None:
    for file_name, data in files:
        vs.file(f"directory/{name}/{file_name}", data)
    vs.add(
        f"directory/{name}",
        "directory",
        {"directory": f"directory/{name}"},
        verdict=verdict,
        exit_code=code,
        rule=rule,
        section=section,
        description=what,
        options={"allow_cut": allow_cut},
    )


def add_directories(vs: VectorSet) -> None:
    good = _series()
    broken = "chain-broken"
    _dir(
        vs,
        "valid-chain",
        [*good, ("notes.txt", b"not a segment\n")],
        "valid",
        0,
        None,
        "7.1",
        "three segments (rotated, rotated, stopped) and a file that is not a segment",
    )
    _dir(
        vs,
        "valid-two-series",
        [*good, *_series(RUN_2, sizes=(1,), reasons=("stopped",))],
        "valid",
        0,
        None,
        "7.1",
        "two gateway runs in one directory",
    )
    cut_last = _series(reasons=("rotated", "rotated", None))
    _dir(
        vs,
        "valid-cut-last",
        cut_last,
        "cut",
        0,
        None,
        "7.1",
        "the last segment cut, cut segments accepted",
        allow_cut=True,
    )
    _dir(
        vs,
        "cut-last-refused",
        cut_last,
        "invalid",
        2,
        "segment.cut",
        "7.1",
        "the last segment cut, cut segments not accepted",
    )

    def wrong_previous(header: Record) -> None:
        header["previous_sha256"] = sha("another segment")

    _dir(
        vs,
        "previous-wrong",
        _series(changes={1: wrong_previous}),
        broken,
        1,
        "chain.previous",
        "7.1",
        "segment 1 names another sha256 than segment 0's",
    )
    _dir(
        vs,
        "first-names-previous",
        _series(changes={0: wrong_previous}),
        broken,
        1,
        "chain.previous",
        "7.1",
        "segment 0 names a previous segment",
    )
    _dir(vs, "missing-first", good[1:], broken, 1, "chain.number", "7.1", "segment 0 removed")
    _dir(
        vs,
        "missing-middle",
        [good[0], good[2]],
        broken,
        1,
        "chain.number",
        "7.1",
        "segment 1 removed",
    )
    _dir(
        vs,
        "missing-last",
        good[:2],
        broken,
        1,
        "chain.last",
        "7.1",
        "segment 2 removed: segment 1, closed 'rotated', is last",
    )
    other_one = _series(sizes=(2, 1, 1))[1][1]
    _dir(
        vs,
        "duplicate-number",
        [*good, (f"{RUN_1}.000001.x.transcript.jsonl", other_one)],
        broken,
        1,
        "chain.number",
        "7.1",
        "two segments numbered 1, the one named for it first (ties are ordered by name)",
    )
    _dir(
        vs,
        "renamed",
        [good[0], (f"{RUN_1}.000007.transcript.jsonl", good[1][1]), good[2]],
        broken,
        1,
        "chain.name",
        "7.1",
        "segment 1 under the name of a segment 7",
    )
    _dir(
        vs,
        "swapped-names",
        [good[0], (good[2][0], good[1][1]), (good[1][0], good[2][1])],
        broken,
        1,
        "chain.name",
        "7.1",
        "segments 1 and 2 under each other's names",
    )
    _dir(
        vs,
        "unpadded-name",
        [(f"{RUN_1}.0.transcript.jsonl", good[0][1]), *good[1:]],
        broken,
        1,
        "chain.name",
        "7.1",
        "segment 0 named without its zero padding",
    )

    def other_pins(header: Record) -> None:
        header["pins"]["vllm_version"] = "0.6.4"

    def other_seed(header: Record) -> None:
        header["seed"] = 1

    _dir(
        vs,
        "pins-differ",
        _series(changes={1: other_pins}),
        broken,
        1,
        "chain.pins",
        "7.1",
        "segment 1 under another vLLM version",
    )
    _dir(
        vs,
        "seed-differs",
        _series(changes={2: other_seed}),
        broken,
        1,
        "chain.pins",
        "7.1",
        "segment 2 under another seed",
    )
    _dir(
        vs,
        "cut-middle",
        _series(reasons=(None, "rotated", "stopped")),
        broken,
        1,
        "chain.rotated",
        "7.1",
        "segment 0 cut, yet segment 1 follows it",
    )
    _dir(
        vs,
        "stopped-middle",
        _series(reasons=("rotated", "stopped", "stopped")),
        broken,
        1,
        "chain.rotated",
        "7.1",
        "segment 1 closed 'stopped', yet segment 2 follows it",
    )
    invalid = [*good]
    name, data = good[1]
    lines = data.splitlines(keepends=True)
    invalid[1] = (name, b"".join(changed(lines, 1, lambda e: e.update(delivery="withheld"))))
    invalid = [*invalid[:2], _series(changes={2: wrong_previous})[2]]
    _dir(
        vs,
        "invalid-and-broken",
        invalid,
        "invalid",
        2,
        "exchange.delivery",
        "7.1",
        "segment 1 invalid and segment 2's chain broken: every segment is verified first",
    )
    _dir(
        vs,
        "empty-segment-file",
        [*good, (f"{RUN_1}.000003.transcript.jsonl", b"")],
        "invalid",
        2,
        "segment.header",
        "7.1",
        "an empty file named as segment 3",
    )
