"""Replays of a transcript segment (docs/spec/run-log.md section 8): pairs of segments and the
verdict of their comparison."""

from __future__ import annotations

from spec_vectors_base import Lines, Record, VectorSet, sha
from spec_vectors_transcripts import RUN_2, changed, exchanges, reclosed, segment, segment_header


def _pair(
    vs: VectorSet,
    name: str,
    a: Lines,
    b: Lines,
    verdict: str,
    code: int,
    rule: str | None,
    what: str,
) -> None:
    files = {
        "run_a": vs.file(f"pair/{name}/a.transcript.jsonl", b"".join(a)),
        "run_b": vs.file(f"pair/{name}/b.transcript.jsonl", b"".join(b)),
    }
    vs.add(
        f"pair/{name}",
        "pair",
        files,
        verdict=verdict,
        exit_code=code,
        rule=rule,
        section="8",
        description=what,
    )


def add_segment_pairs(vs: VectorSet) -> None:
    records = exchanges()
    claim = segment(segment_header(), records)
    whole = segment(segment_header(), [r for r in records if r["incomplete"] is None])
    cut = claim[:-1]
    replay = "not-a-replay"

    def token(record: Record) -> None:
        record["output_token_ids"][0] += 1

    _pair(
        vs,
        "segment-identical",
        whole,
        whole,
        "identical",
        0,
        None,
        "every exchange complete, the same bytes",
    )
    _pair(
        vs,
        "segment-incomplete",
        claim,
        claim,
        "incomplete",
        0,
        None,
        "the same bytes, two exchanges incomplete (streams that ended early)",
    )
    _pair(vs, "segment-cut", cut, cut, "cut", 1, "replay.cut", "both cut alike")
    _pair(
        vs,
        "segment-cut-torn",
        [*cut, claim[-1][:30]],
        cut,
        "cut",
        1,
        "replay.cut",
        "both cut alike, a torn line after the cut in A only",
    )
    _pair(
        vs,
        "segment-divergent",
        whole,
        changed(whole, 2, token),
        "divergent",
        1,
        "replay.divergent",
        "one output token differs",
    )
    _pair(
        vs,
        "segment-delivery",
        whole,
        changed(whole, 1, lambda e: e.update(delivery="undelivered")),
        "divergent",
        1,
        "replay.divergent",
        "an exchange's delivery differs",
    )
    _pair(
        vs,
        "segment-check",
        whole,
        changed(whole, 3, lambda e: e.update(constraint_check="not_checked")),
        "divergent",
        1,
        "replay.divergent",
        "an exchange's constraint check differs",
    )
    _pair(
        vs,
        "segment-cut-divergent",
        cut,
        changed(cut, 2, token, close=False),
        "divergent",
        1,
        "replay.divergent",
        "both cut alike; one output token differs",
    )
    _pair(
        vs,
        "segment-pins",
        claim,
        changed(claim, 0, lambda h: h["pins"].update(vllm_version="0.6.4")),
        replay,
        1,
        "replay.header",
        "another vLLM version",
    )
    _pair(
        vs,
        "segment-transcript-id",
        claim,
        changed(claim, 0, lambda h: h.update(transcript_id=RUN_2)),
        replay,
        1,
        "replay.header",
        "another transcript id",
    )
    _pair(
        vs,
        "segment-reason",
        claim,
        reclosed(claim, "rotated"),
        replay,
        1,
        "replay.header",
        "closed 'stopped' against closed 'rotated'",
    )
    _pair(vs, "segment-cut-vs-closed", claim, cut, replay, 1, "replay.header", "closed against cut")
    _pair(
        vs,
        "segment-exchange-id",
        claim,
        changed(claim, 2, lambda e: e.update(id=sha("other")[:32])),
        replay,
        1,
        "replay.request",
        "an exchange with another id",
    )

    def completed(record: Record) -> None:
        record.update(finish_reason="length", incomplete=None, delivery="delivered")

    _pair(
        vs,
        "segment-incomplete-vs-complete",
        claim,
        changed(claim, 6, completed),
        replay,
        1,
        "replay.request",
        "an exchange incomplete in A, complete in B",
    )
    extra = segment(
        segment_header(), [*[r for r in records if r["incomplete"] is None], records[0]]
    )
    _pair(
        vs,
        "segment-extra-exchange",
        whole,
        extra,
        replay,
        1,
        "replay.request",
        "B holds one exchange more",
    )
    _pair(
        vs,
        "segment-invalid-header",
        changed(whole, 0, lambda h: h.update(format_version=4)),
        whole,
        "invalid",
        2,
        "line.version",
        "A's header is of another version: still a transcript, compared as one, and invalid",
    )
    _pair(
        vs,
        "segment-invalid-a",
        changed(whole, 2, lambda e: e.update(index=5)),
        whole,
        "invalid",
        2,
        "segment.index",
        "A is not a valid segment",
    )
