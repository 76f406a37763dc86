"""What of its transcript line an output may take: counted exactly as the line spells it, the
reserve for the other fields measured and shown sufficient and tight, every cap held.

The gateway relays an engine's output before it records it; an output its line cannot hold
was relayed and then refused by the writer (the client held tokens no line held). The output is
now held to its line's budget as it comes (:mod:`detserve.gateway.line_budget`); the streams
through a gateway are tests/unit/test_gateway_line_streams.py.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, get_args

import pytest

from detserve.canonical import canonical_bytes, canonical_json
from detserve.errors import RunLogError
from detserve.gateway.line_budget import (
    FIXED_BYTES,
    OutputTooLong,
    Usage,
    output_budget,
    string_bytes,
)
from detserve.gateway.upstream import Output
from detserve.runlog.models import (
    MAX_LINE_BYTES,
    MAX_SAMPLES,
    MAX_TEXT_CHARS,
    MAX_TOKENS,
    ConstraintCheck,
    Delivery,
    ExchangeRequest,
    Incomplete,
)
from detserve.runlog.transcript import TranscriptWriter, canonical_request

from .test_transcript import HEADER

#: a request with a constraint, so that ``constraint_check`` may be its longest
REQUEST = ExchangeRequest(
    kind="completion",
    max_tokens=8,
    messages=None,
    prompt="Hi",
    response_format=None,
    stop=None,
    structured_outputs='{"regex":"a+"}',
)
BUDGET = output_budget(len(canonical_request(REQUEST)))
#: every character RFC 8785 escapes, and characters of each UTF-8 length beside
AWKWARD = "".join(map(chr, range(0x20))) + '"\\/\x7f\u2028\u2029éab€😀\U0010ffff'


def chunk(text: str, tokens: list[int], prompt: list[int] | None = None, **choice: Any) -> Any:
    body: dict[str, Any] = {"index": 0, "text": text, "token_ids": tokens} | choice
    if prompt is not None:
        body["prompt_token_ids"] = prompt
    return {"choices": [body]}


@pytest.mark.parametrize("text", [*AWKWARD, AWKWARD, AWKWARD * 3 + "plain", "", "plain"])
def test_a_string_is_counted_as_canonical_json_writes_it(text: str) -> None:
    assert string_bytes(text) == len(canonical_json(text).encode()) - 2


@pytest.mark.parametrize(
    ("tokens", "prompt"),
    [([], [1]), ([0], [2**31 - 1]), ([9, 10, 99, 100, 2**31 - 1], [0, 1, 1000000])],
)
def test_an_output_is_counted_as_its_line_writes_it(tokens: list[int], prompt: list[int]) -> None:
    values = {"output_token_ids": tokens, "prompt_token_ids": prompt, "text": AWKWARD}
    spelled = sum(len(canonical_json(value).encode()) for value in values.values())
    assert Usage.of(AWKWARD, tokens, prompt).line_bytes == spelled
    # as a stream brings it: the prompt once, then a piece and a token at a time
    usage = Usage().plus("", [], prompt)
    for piece, token in itertools.zip_longest(AWKWARD, tokens, fillvalue=None):
        usage = usage.plus(piece or "", [] if token is None else [token])
    assert usage.line_bytes == spelled


def _fixed_fields() -> list[dict[str, Any]]:
    """Every value of the fields besides the request and the output a line may hold together
    (the sequence's rule: a ``finish_reason`` exactly when not incomplete), at its longest."""
    ends = [("a" * 32, None), *((None, why) for why in get_args(Incomplete))]
    return [
        {"constraint_check": check, "delivery": delivery, "finish_reason": finish}
        | {"incomplete": incomplete, "id": "f" * 32, "index": MAX_SAMPLES - 1}
        for check in (*get_args(ConstraintCheck), None)
        for delivery in get_args(Delivery)
        for finish, incomplete in ends
    ]


def test_the_reserve_is_the_longest_the_fixed_fields_take() -> None:
    empty = {"output_token_ids": [], "prompt_token_ids": [], "text": "", "request": {}}
    # each empty value is two bytes ([] [] "" {}): what is left is the fixed fields
    measured = max(
        len(canonical_bytes(fields | empty | {"record": "exchange"})) - 8
        for fields in _fixed_fields()
    )
    assert measured == FIXED_BYTES


def _worst_case_line(tmp_path: Path, text: str, prompt: list[int], tokens: list[int]) -> bytes:
    """The exchange written with the longest fixed fields: the last index a segment holds,
    ``not_checked``, ``undelivered``, a finish_reason of 32 characters."""
    writer = TranscriptWriter(tmp_path / "worst.transcript.jsonl", HEADER)
    writer._sequence.next_index = MAX_SAMPLES - 1  # no test writes a billion lines before it
    fields = {
        "constraint_check": "not_checked",
        "delivery": "undelivered",
        "finish_reason": "a" * 32,
        "id": "f" * 32,
        "incomplete": None,
        "output_token_ids": tokens,
        "prompt_token_ids": prompt,
        "request": REQUEST.model_dump(mode="json"),
        "text": text,
    }
    writer.append(fields)
    writer.close("stopped")
    return (tmp_path / "worst.transcript.jsonl").read_bytes().splitlines(keepends=True)[1]


def _at_budget(extra: int) -> Output:
    """An output whose values take the budget and ``extra`` bytes more, the last chunk taking
    it there (refused when past the budget)."""
    output = Output("completion", max_tokens=8, line_budget=BUDGET)
    output.add_chunk(chunk("é\n", [2**31 - 1], prompt=[2**31 - 1, 0]))
    left = BUDGET - output.usage.line_bytes - len(",7") + extra
    # '€' is three bytes: the rest in '€', then 'é' (two) or 'a' (one) for what remains
    piece = "€" * (left // 3) + {0: "", 1: "a", 2: "é"}[left % 3]
    output.add_chunk(chunk(piece, [7], finish_reason="a" * 32))
    return output


def test_an_output_at_its_budget_fits_the_longest_line_exactly(tmp_path: Path) -> None:
    output = _at_budget(0)
    assert output.usage.line_bytes == BUDGET
    text = "".join(output.text)
    line = _worst_case_line(tmp_path, text, output.prompt_token_ids, output.token_ids)
    assert len(line) == MAX_LINE_BYTES  # the reserve is enough, and no more than enough
    # one byte more, and the writer refuses the line: the budget is the line's, exactly
    with pytest.raises(RunLogError, match=f"longer than {MAX_LINE_BYTES} bytes"):
        _worst_case_line(tmp_path / "more", text + "a", output.prompt_token_ids, output.token_ids)


def test_a_chunk_one_byte_past_the_budget_is_refused_and_nothing_of_it_kept() -> None:
    with pytest.raises(OutputTooLong, match=f"has room for {BUDGET} beside the request"):
        _at_budget(1)
    output = Output("completion", max_tokens=8, line_budget=BUDGET)
    output.add_chunk(chunk("é\n", [2**31 - 1], prompt=[2**31 - 1, 0]))
    kept = (list(output.text), list(output.token_ids), output.usage, output.finish_reason)
    with pytest.raises(OutputTooLong):
        output.add_chunk(chunk("é" * (BUDGET // 2), [7], finish_reason="length"))
    assert (output.text, output.token_ids, output.usage, output.finish_reason) == kept
    output.add_chunk(chunk("é", [7], finish_reason="length"))  # the stream could have gone on


def test_a_prompt_past_the_budget_is_refused_on_its_first_chunk() -> None:
    output = Output("completion", max_tokens=8, line_budget=BUDGET)
    prompt = [2**31 - 1] * (BUDGET // 11 + 1)  # ten digits and a comma each
    with pytest.raises(OutputTooLong, match=f"has room for {BUDGET} beside the request"):
        output.add_chunk(chunk("", [7], prompt=prompt))
    assert (output.prompt_token_ids, output.usage) == ([], Usage())


def test_a_prompt_repeated_on_every_chunk_is_counted_once() -> None:
    output = Output("completion", max_tokens=8, line_budget=BUDGET)
    for token in range(3):
        output.add_chunk(chunk("x", [token], prompt=[5, 6]))
    assert output.usage == Usage.of("xxx", [0, 1, 2], [5, 6])


def test_each_field_is_held_to_its_cap() -> None:
    budget = output_budget(0)
    text = Output("completion", line_budget=budget)
    text.add_chunk(chunk("a" * MAX_TEXT_CHARS, [1], prompt=[1]))
    with pytest.raises(OutputTooLong, match=f"at most {MAX_TEXT_CHARS}"):
        text.add_chunk(chunk("a", [1]))
    tokens = Output("completion", line_budget=budget)  # max_tokens unchecked: the cap holds
    tokens.add_chunk(chunk("", [0] * MAX_TOKENS, prompt=[1]))
    with pytest.raises(OutputTooLong, match=f"the output would be {MAX_TOKENS + 1} tokens"):
        tokens.add_chunk(chunk("", [0]))
    prompt = Output("completion", line_budget=budget)
    with pytest.raises(OutputTooLong, match=f"the prompt would be {MAX_TOKENS + 1} tokens"):
        prompt.add_chunk(chunk("", [0], prompt=[0] * (MAX_TOKENS + 1)))
    prompt.add_chunk(chunk("", [0], prompt=[0] * MAX_TOKENS))


def _answer(text: str, tokens: list[int], prompt: list[int], finish: Any = "length") -> Any:
    choice = {"index": 0, "text": text, "token_ids": tokens, "prompt_token_ids": prompt}
    return {"choices": [choice | {"finish_reason": finish}]}


def test_a_whole_answer_is_held_to_its_budget_before_anything_is_kept() -> None:
    room = BUDGET - Usage.of("", [1], [1]).line_bytes
    text = "é" * (room // 2) + "a" * (room % 2)
    fits = Output("completion", line_budget=BUDGET)
    fits.add_answer(_answer(text, [1], [1]))
    assert fits.usage.line_bytes == BUDGET
    over = Output("completion", line_budget=BUDGET)
    with pytest.raises(OutputTooLong, match=f"has room for {BUDGET} beside the request"):
        over.add_answer(_answer(text + "a", [1], [1]))
    assert (over.text, over.token_ids, over.prompt_token_ids) == ([], [], [])
    unchecked = Output("completion")  # a replay's: checked once cut as the claim's was
    unchecked.add_answer(_answer(text + "a", [1], [1]))


@pytest.mark.parametrize("finish", ["", "Stop", "a" * 33, 7, ["stop"]])
def test_a_finish_reason_no_line_holds_is_refused(finish: Any) -> None:
    streamed = Output("completion", line_budget=BUDGET)
    with pytest.raises(ValueError, match="finish_reason"):
        streamed.add_chunk(chunk("x", [1], prompt=[1], finish_reason=finish))
    assert streamed.token_ids == []
    if finish != "":  # a whole answer's empty finish_reason is recorded "unknown"
        with pytest.raises(ValueError, match="finish_reason"):
            Output("completion", line_budget=BUDGET).add_answer(_answer("x", [1], [1], finish))


def test_the_request_takes_of_its_line_what_admission_counted(tmp_path: Path) -> None:
    """The budget subtracts the request's canonical JSON: the very bytes its line holds."""
    line = _worst_case_line(tmp_path, "x", [1], [2])
    assert b',"request":' + canonical_request(REQUEST) + b',"text":' in line
    assert json.loads(line)["request"] == REQUEST.model_dump(mode="json")
