"""Transcript vectors of docs/spec/run-log.md section 6.7: the request and its constraint.

To re-check when the gateway's admission change (a constraint recorded as the exact text sent)
lands: these vectors hold constraints in the form format version 5 records on ``main`` today.
"""

from __future__ import annotations

from collections.abc import Callable

from spec_vectors_base import Lines, Record, VectorSet, replace_once
from spec_vectors_segments import segment_vector
from spec_vectors_transcripts import changed, reclosed


def add_requests(vs: VectorSet, good: Lines) -> None:
    """Section 6.7: the request and its constraint (to re-check with the admission change)."""
    bad = "invalid"

    def request(change: Callable[[Record], None]) -> Callable[[Record], None]:
        return lambda record: change(record["request"])

    segment_vector(
        vs,
        "chat-with-prompt",
        changed(good, 2, request(lambda r: r.update(prompt="x"))),
        bad,
        2,
        "request.kind",
        "6.7",
        "a chat holding a prompt",
    )
    segment_vector(
        vs,
        "completion-without-prompt",
        changed(good, 1, request(lambda r: r.update(prompt=None))),
        bad,
        2,
        "request.kind",
        "6.7",
        "a completion holding neither prompt nor messages",
    )
    segment_vector(
        vs,
        "two-constraints",
        changed(good, 4, request(lambda r: r["constraint"].update(choice=["1"]))),
        bad,
        2,
        "line.schema",
        "6.7",
        "a constraint object of two kinds",
    )
    segment_vector(
        vs,
        "unknown-constraint",
        changed(good, 4, request(lambda r: r.update(constraint={"ebnf": "x"}))),
        bad,
        2,
        "request.constraint",
        "6.7",
        "a constraint kind the format does not define",
    )
    segment_vector(
        vs,
        "json-object-false",
        changed(good, 9, request(lambda r: r.update(constraint={"json_object": False}))),
        bad,
        2,
        "request.constraint",
        "6.7",
        "json_object false",
    )
    segment_vector(
        vs,
        "empty-regex",
        changed(good, 4, request(lambda r: r.update(constraint={"regex": ""}))),
        bad,
        2,
        "request.constraint",
        "6.7",
        "an empty regex",
    )
    segment_vector(
        vs,
        "choice-not-strings",
        changed(good, 5, request(lambda r: r.update(constraint={"choice": ["yes", 1]}))),
        bad,
        2,
        "request.constraint",
        "6.7",
        "a choice holding a number",
    )
    segment_vector(
        vs,
        "empty-schema",
        changed(good, 3, request(lambda r: r.update(constraint={"json_schema": {}}))),
        bad,
        2,
        "request.constraint",
        "6.7",
        "an empty JSON Schema",
    )
    segment_vector(
        vs,
        "stop-empty-list",
        changed(good, 1, request(lambda r: r.update(stop=[]))),
        bad,
        2,
        "line.schema",
        "6.7",
        "an empty stop list (null when none)",
    )
    not_canonical = [*good]
    not_canonical[3] = replace_once(good[3], b'"minimum":0.5', b'"minimum":0.50')
    segment_vector(
        vs,
        "schema-number-not-canonical",
        reclosed(not_canonical),
        bad,
        2,
        "line.canonical",
        "6.7",
        "0.50 inside a JSON Schema constraint",
    )
    big = [*good]
    big[3] = replace_once(good[3], b'"minimum":0.5', b'"minimum":9007199254740993')
    segment_vector(
        vs,
        "schema-integer-past-2-53",
        reclosed(big),
        bad,
        2,
        "line.integer-range",
        "2.2",
        "2^53 + 1 inside a JSON Schema constraint",
    )
    exact = [*good]
    exact[3] = replace_once(good[3], b'"minimum":0.5', b'"minimum":9007199254740992')
    segment_vector(
        vs,
        "schema-integer-2-53",
        reclosed(exact),
        bad,
        2,
        "line.integer-range",
        "2.2",
        "2^53 inside a JSON Schema constraint: a double, but an integer literal past 2^53 - 1",
    )
    segment_vector(
        vs,
        "bad-exchange-id",
        changed(good, 1, lambda e: e.update(id="Z" * 32)),
        bad,
        2,
        "line.schema",
        "6.3",
        "an exchange id that is not hex",
    )
