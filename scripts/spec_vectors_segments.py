"""Transcript segment vectors (docs/spec/run-log.md section 6): valid, cut and torn segments, and
one near-miss per rule of a segment (the request's own rules are ``spec_vectors_requests``')."""

from __future__ import annotations

import json

from spec_vectors_base import Lines, Record, VectorSet, line, valid_run_log
from spec_vectors_transcripts import changed, reclosed, segment, segment_header, valid_segment


def segment_vector(
    vs: VectorSet,
    name: str,
    data: Lines | bytes,
    verdict: str,
    code: int,
    rule: str | None,
    section: str,
    what: str,
    allow_cut: bool = False,
) -> None:
    blob = data if isinstance(data, bytes) else b"".join(data)
    path = vs.file(f"segment/{name}.transcript.jsonl", blob)
    vs.add(
        f"segment/{name}",
        "segment",
        {"log": path},
        verdict=verdict,
        exit_code=code,
        rule=rule,
        section=section,
        description=what,
        options={"allow_cut": allow_cut},
    )


def add_segments(vs: VectorSet) -> None:
    good = valid_segment()
    cut = good[:-1]
    bad = "invalid"
    segment_vector(
        vs,
        "valid-closed",
        good,
        "valid",
        0,
        None,
        "6",
        "nine exchanges: complete, cut by length, constrained (satisfied, violated and withheld, "
        "violated and undelivered, cut, not checked), incomplete; closed 'stopped'",
    )
    segment_vector(
        vs,
        "valid-empty",
        segment(segment_header(), []),
        "valid",
        0,
        None,
        "6.4",
        "no exchange; the footer hashes no bytes",
    )
    segment_vector(
        vs,
        "valid-cut",
        cut,
        "cut",
        0,
        None,
        "6.5",
        "no footer, read with cut segments accepted",
        allow_cut=True,
    )
    segment_vector(
        vs,
        "cut-refused",
        cut,
        bad,
        2,
        "segment.cut",
        "6.5",
        "the same cut segment, cut segments not accepted",
    )
    torn = [*cut, good[-1][:40]]
    segment_vector(
        vs,
        "valid-cut-torn",
        torn,
        "cut",
        0,
        None,
        "6.5",
        "cut, and a torn line (no LF) after the last complete one",
        allow_cut=True,
    )
    segment_vector(
        vs,
        "torn-refused",
        torn,
        bad,
        2,
        "line.newline",
        "6.5",
        "the same torn segment, cut segments not accepted",
    )
    segment_vector(
        vs,
        "torn-header",
        good[0][:-1],
        bad,
        2,
        "line.newline",
        "6.5",
        "a header without its LF, even with cut segments accepted",
        allow_cut=True,
    )
    segment_vector(
        vs,
        "header-only-cut",
        good[:1],
        "cut",
        0,
        None,
        "6.5",
        "a header and nothing else: cut before its first exchange",
        allow_cut=True,
    )
    segment_vector(
        vs, "empty", b"", bad, 2, "segment.header", "6.6", "an empty file", allow_cut=True
    )

    segment_vector(
        vs,
        "run-log-not-segment",
        valid_run_log(1),
        bad,
        2,
        "segment.header",
        "6.6",
        "a sampled run log read as a transcript segment",
    )
    segment_vector(
        vs,
        "other-version",
        changed(good, 0, lambda h: h.update(format_version=4)),
        bad,
        2,
        "line.version",
        "2.2",
        "a version 4 transcript header",
    )
    segment_vector(
        vs,
        "index-gap",
        changed(good, 3, lambda e: e.update(index=3)),
        bad,
        2,
        "segment.index",
        "6.3",
        "indices 0, 1, 3",
    )
    segment_vector(
        vs,
        "finish-and-incomplete",
        changed(good, 6, lambda e: e.update(finish_reason="stop")),
        bad,
        2,
        "exchange.finish",
        "6.3",
        "an incomplete exchange with a finish reason",
    )
    segment_vector(
        vs,
        "neither-finish-nor-incomplete",
        changed(good, 1, lambda e: e.update(finish_reason=None)),
        bad,
        2,
        "exchange.finish",
        "6.3",
        "no finish reason, not incomplete",
    )
    segment_vector(
        vs,
        "check-unconstrained",
        changed(good, 1, lambda e: e.update(constraint_check="satisfied")),
        bad,
        2,
        "exchange.check",
        "6.3",
        "a constraint check without a constraint",
    )
    segment_vector(
        vs,
        "constraint-unchecked",
        changed(good, 3, lambda e: e.update(constraint_check=None)),
        bad,
        2,
        "exchange.check",
        "6.3",
        "a constraint without its check",
    )
    segment_vector(
        vs,
        "cut-check-whole",
        changed(good, 3, lambda e: e.update(constraint_check="cut")),
        bad,
        2,
        "exchange.cut",
        "6.3",
        "check 'cut' for an output that finished 'stop'",
    )
    segment_vector(
        vs,
        "violated-but-cut",
        changed(good, 5, lambda e: e.update(constraint_check="violated", delivery="withheld")),
        bad,
        2,
        "exchange.cut",
        "6.3",
        "check 'violated' for an output cut by max_tokens",
    )
    segment_vector(
        vs,
        "delivered-incomplete",
        changed(good, 6, lambda e: e.update(delivery="delivered")),
        bad,
        2,
        "exchange.delivery",
        "6.3",
        "an incomplete exchange 'delivered'",
    )
    segment_vector(
        vs,
        "delivered-violated",
        changed(good, 4, lambda e: e.update(delivery="delivered")),
        bad,
        2,
        "exchange.delivery",
        "6.3",
        "a violated output 'delivered'",
    )
    segment_vector(
        vs,
        "partial-violated",
        changed(good, 4, lambda e: e.update(delivery="partial")),
        bad,
        2,
        "exchange.delivery",
        "6.3",
        "a violated output 'partial'",
    )
    segment_vector(
        vs,
        "withheld-satisfied",
        changed(good, 3, lambda e: e.update(delivery="withheld")),
        bad,
        2,
        "exchange.delivery",
        "6.3",
        "a satisfied output 'withheld'",
    )

    def one_more(record: Record) -> None:
        record["output_token_ids"].append(99)

    segment_vector(
        vs,
        "too-many-tokens",
        changed(good, 2, one_more),
        bad,
        2,
        "exchange.max-tokens",
        "6.3",
        "9 output tokens under the request's max_tokens 8",
    )
    footer = json.loads(good[-1])
    segment_vector(
        vs,
        "footer-exchanges-hash",
        changed(good, 1, lambda e: e.update(text=" 43."), close=False),
        bad,
        2,
        "segment.footer",
        "6.4",
        "an exchange's text changed after the footer was written",
    )
    segment_vector(
        vs,
        "footer-count",
        [*good[:-1], line({**footer, "n_exchanges": 8})],
        bad,
        2,
        "segment.footer",
        "6.4",
        "a footer counting 8 exchanges of 9",
    )
    segment_vector(
        vs,
        "footer-header-hash",
        changed(good, 0, lambda h: h.update(seed=1), close=False),
        bad,
        2,
        "segment.footer",
        "6.4",
        "the seed changed after the footer was written",
    )
    segment_vector(
        vs,
        "after-footer",
        [*good, good[1]],
        bad,
        2,
        "segment.end",
        "6.6",
        "an exchange after the footer",
    )
    segment_vector(
        vs,
        "second-header",
        reclosed([good[0], *good[:-1], good[-1]]),
        bad,
        2,
        "segment.record",
        "6.6",
        "the header twice",
    )
    segment_vector(
        vs,
        "sample-in-segment",
        [good[0], valid_run_log(1)[1], *good[1:]],
        bad,
        2,
        "segment.record",
        "6.6",
        "a run-log sample among the exchanges",
    )
