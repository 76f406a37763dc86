"""Transcript segments for the test vectors (docs/spec/run-log.md section 6): headers, exchanges
of every kind section 6.3 tells apart, footers, and one change at a time to them."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

from spec_vectors_base import (
    ENGINE_PINS,
    FORMAT,
    FORMAT_VERSION,
    Record,
    line,
    sha,
)

Lines = list[bytes]
RUN_1 = sha("gateway run 1")[:32]
RUN_2 = sha("gateway run 2")[:32]


def segment_header(
    transcript_id: str = RUN_1, segment: int = 0, previous: str | None = None, seed: int = 0
) -> Record:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pins": copy.deepcopy(ENGINE_PINS),
        "previous_sha256": previous,
        "record": "transcript",
        "seed": seed,
        "segment": segment,
        "transcript_id": transcript_id,
    }


def constraint_text(value: Record) -> str:
    """A constraint field's JSON text as the gateway sends and records it (section 6.7's compact
    form: no white space, members in their order)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _request(
    kind: str,
    constraint: Record | None = None,
    max_tokens: int = 8,
    field: str = "structured_outputs",
) -> Record:
    chat = kind == "chat"
    text = None if constraint is None else constraint_text(constraint)
    return {
        "kind": kind,
        "max_tokens": max_tokens,
        "messages": [{"content": "Say hi", "role": "user"}] if chat else None,
        "prompt": None if chat else "Tell me a number:",
        "response_format": text if field == "response_format" else None,
        "stop": None,
        "structured_outputs": text if field == "structured_outputs" else None,
    }


def exchange(
    n: int,
    request: Record,
    output: list[int],
    text: str,
    *,
    finish: str | None,
    incomplete: str | None = None,
    check: str | None = None,
    delivery: str = "delivered",
) -> Record:
    return {
        "constraint_check": check,
        "delivery": delivery,
        "finish_reason": finish,
        "id": sha(f"exchange {n}")[:32],
        "incomplete": incomplete,
        "index": 0,
        "output_token_ids": output,
        "prompt_token_ids": [1, 500 + n, 2],
        "record": "exchange",
        "request": request,
        "text": text,
    }


def exchanges() -> list[Record]:
    """Nine exchanges, one of each kind the rules of section 6.3 tell apart, with constraints in
    both fields of section 6.7 (a schema's properties out of alphabetical order, a ``text``
    response format that is no constraint)."""
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "number",
            "schema": {
                "type": "object",
                "properties": {"n": {"type": "number", "minimum": 0.5}},
                "required": ["n"],
            },
        },
    }
    return [
        exchange(0, _request("completion"), [11, 12, 13], " 42.", finish="stop"),
        exchange(
            1,
            _request("chat", {"type": "text"}, field="response_format"),
            [21, 22, 23, 24, 25, 26, 27, 28],
            "Hi there, how are",
            finish="length",
        ),
        exchange(
            2,
            _request("chat", schema, field="response_format"),
            [31, 32],
            '{"n":1}',
            finish="stop",
            check="satisfied",
        ),
        exchange(
            3,
            _request("completion", {"regex": "[0-9]+"}),
            [41],
            "x",
            finish="stop",
            check="violated",
            delivery="withheld",
        ),
        exchange(
            4,
            _request("completion", {"choice": ["yes", "no"]}, max_tokens=1),
            [51],
            "y",
            finish="length",
            check="cut",
        ),
        exchange(
            5,
            _request("completion"),
            [61, 62],
            " 7",
            finish=None,
            incomplete="client_disconnected",
            delivery="partial",
        ),
        exchange(
            6,
            _request("completion", {"grammar": "start: /[0-9]+/"}),
            [71],
            "8",
            finish="stop",
            check="not_checked",
        ),
        exchange(
            7,
            _request("completion", {"regex": "[a-z]+"}),
            [81],
            "9",
            finish="stop",
            check="violated",
            delivery="undelivered",
        ),
        exchange(
            8,
            _request("chat", {"type": "json_object"}, field="response_format"),
            [91],
            "{",
            finish=None,
            incomplete="engine_failed",
            check="cut",
            delivery="undelivered",
        ),
    ]


def segment(header: Record, records: list[Record], reason: str | None = "stopped") -> Lines:
    """A segment's lines, exchanges indexed in order; closed with ``reason``, cut when None."""
    lines = [line(header)]
    for index, record in enumerate(records):
        lines.append(line({**record, "index": index}))
    if reason is not None:
        lines.append(line(segment_footer(lines, reason)))
    return lines


def segment_footer(lines: Lines, reason: str, n_exchanges: int | None = None) -> Record:
    return {
        "exchanges_sha256": sha(b"".join(lines[1:])),
        "header_sha256": sha(lines[0]),
        "n_exchanges": len(lines) - 1 if n_exchanges is None else n_exchanges,
        "reason": reason,
        "record": "transcript-end",
    }


def reclosed(lines: Lines, reason: str = "stopped") -> Lines:
    """``lines`` (header, exchanges, footer) with the footer recomputed over the exchanges."""
    return [*lines[:-1], line(segment_footer(lines[:-1], reason))]


def changed(
    lines: Lines,
    at: int,
    change: Callable[[Record], None],
    *,
    close: bool = True,
    reason: str = "stopped",
) -> Lines:
    record = json.loads(lines[at])
    change(record)
    changed = [*lines]
    changed[at] = line(record)
    return reclosed(changed, reason) if close else changed


def valid_segment() -> Lines:
    return segment(segment_header(), exchanges())
