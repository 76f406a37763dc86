"""An engine's output past what its transcript line holds: what the client got is recorded.

The gateway relays a stream's chunks as they come and records the exchange at its end. An
engine (faulty, hostile, or vLLM with a long ``max_tokens`` of long tokens) that streamed more
than a line holds (8 MiB, less the request) had its chunks relayed; then the line was refused,
the client was told the answer could not be recorded, and it held tokens no line held. Now the
chunk that would cross the budget is the engine's failure, neither kept nor sent, and the line
records, incomplete (``engine_failed``), exactly what the client got; a whole answer past it is a
502 before anything is sent; a replay agrees (tests/unit/test_gateway_line_budget.py counts the
budget itself).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from detserve.errors import Divergence
from detserve.evaluation import Verdict
from detserve.gateway.line_budget import Usage, output_budget
from detserve.gateway.relay import TOO_LONG
from detserve.runlog.models import MAX_TOKENS, ExchangeRequest
from detserve.runlog.series import validate_transcript_dir
from detserve.runlog.transcript import (
    TranscriptWriter,
    canonical_request,
    read_exchanges,
    validate_transcript,
)

from .committed import TinyWorkspace
from .fake_http import Answer
from .gateway_rig import Fixture, GatewayRig, StreamingFakeVllm, gateway_running
from .test_gateway_replay import replay

MODEL = "tiny-llama"
BODY = {"model": MODEL, "prompt": "Hi", "max_tokens": 8}
#: the request BODY is recorded as
REQUEST = ExchangeRequest(
    kind="completion",
    max_tokens=8,
    messages=None,
    prompt="Hi",
    response_format=None,
    stop=None,
    structured_outputs=None,
)
BUDGET = output_budget(len(canonical_request(REQUEST)))


@dataclass
class LongVllm(StreamingFakeVllm):
    """The rig's fake vLLM, streaming ``script`` and answering ``whole`` when they are set."""

    script: tuple[str, ...] | None = None
    whole: Answer | None = None

    def answer(self, method: str, path: str, body: Any) -> Answer:
        if method == "POST" and body.get("stream") and self.script is not None:
            return Answer(events=self.script)
        if method == "POST" and not body.get("stream") and self.whole is not None:
            return self.whole
        return super().answer(method, path, body)


@pytest.fixture
def fake() -> LongVllm:
    return LongVllm()


@pytest.fixture
def rig(fixture: Fixture, fake: LongVllm) -> Iterator[GatewayRig]:
    with gateway_running(fixture, fake) as running:
        yield running


def event(text: str, tokens: list[int], prompt: list[int] | None = None, finish: Any = None) -> str:
    choice: dict[str, Any] = {"index": 0, "text": text, "token_ids": tokens}
    choice["finish_reason"] = finish
    if prompt is not None:
        choice["prompt_token_ids"] = prompt
    document = {"id": "c", "object": "text_completion", "created": 1, "model": MODEL}
    return json.dumps(document | {"choices": [choice]}, ensure_ascii=False)


@dataclass
class Received:
    """What the client got of a stream."""

    tokens: list[int]
    text: str
    errors: list[str]
    exchange_id: str


def streamed(rig: GatewayRig, body: dict[str, Any] = BODY) -> Received:
    tokens: list[int] = []
    text: list[str] = []
    errors: list[str] = []
    with httpx.stream(
        "POST", f"{rig.url}/v1/completions", json=body | {"stream": True}, timeout=60
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            document = json.loads(line.removeprefix("data: "))
            if "error" in document:
                errors.append(document["error"]["message"])
            else:
                tokens += document["choices"][0]["token_ids"]
                text.append(document["choices"][0]["text"])
    return Received(tokens, "".join(text), errors, response.headers["X-Detserve-Id"])


def recorded(rig: GatewayRig) -> list[Any]:
    """The exchanges of the gateway's transcript, once it is stopped and checked whole."""
    rig.stop()
    validate_transcript_dir(rig.transcripts)
    (segment,) = sorted(rig.transcripts.iterdir())
    return read_exchanges(segment)


def assert_recorded_as_received(rig: GatewayRig, got: Received) -> None:
    """The line holds exactly what the client got, recorded as the engine's failure."""
    assert len(got.errors) == 1, got.errors
    assert got.errors[0].startswith("the engine failed mid-stream: the output would take")
    provenance = rig.gateway.transcript.provenance(got.exchange_id)
    assert provenance is not None, "the client got tokens that no line holds"
    (line,) = recorded(rig)
    assert (line.incomplete, line.delivery, line.finish_reason) == (
        "engine_failed",
        "partial",
        None,
    )
    assert (list(line.output_token_ids), line.text) == (got.tokens, got.text)


def test_a_stream_crossing_its_budget_is_cut_where_the_client_was(
    rig: GatewayRig, fake: LongVllm
) -> None:
    # every width of character and escape the line writes: 19 bytes in the line, 6 characters
    piece = '"é\x01€😀\n' * 90_000
    first = event(piece, [7], prompt=[5, 6])
    rest = [event(piece, [8 + n], finish="length" if n == 4 else None) for n in range(5)]
    fake.script = (first, *rest, "[DONE]")
    got = streamed(rig)
    assert got.tokens == [7, 8, 9, 10]  # a fifth piece would take the output past the budget
    assert got.text == piece * 4
    assert_recorded_as_received(rig, got)


def _to_the_budget(extra: int) -> tuple[str, ...]:
    """A stream whose output takes the budget and ``extra`` bytes more, its finishing chunk
    taking it there."""
    pieces = ["a", "€" * 900_000, "€" * 900_000, "€" * 900_000]
    taken = Usage.of("".join(pieces), [7, 8, 9, 10, 11], [5, 6]).line_bytes
    last = "é" * ((BUDGET - taken + extra) // 2) + "a" * ((BUDGET - taken + extra) % 2)
    pieces.append(last)
    events = [event(pieces[0], [7], prompt=[5, 6])]
    events += [event(text, [8 + n]) for n, text in enumerate(pieces[1:-1])]
    return (*events, event(last, [11], finish="length"), "[DONE]")


def test_a_stream_at_its_budget_is_delivered_whole(rig: GatewayRig, fake: LongVllm) -> None:
    fake.script = _to_the_budget(0)
    got = streamed(rig)
    assert (got.tokens, got.errors) == ([7, 8, 9, 10, 11], [])
    (line,) = recorded(rig)
    assert (line.incomplete, line.delivery, line.text) == (None, "delivered", got.text)
    assert canonical_request(line.request) == canonical_request(REQUEST)
    assert Usage.of(line.text, line.output_token_ids, line.prompt_token_ids).line_bytes == BUDGET


def test_a_stream_one_byte_past_its_budget_is_cut_before_its_last_chunk(
    rig: GatewayRig, fake: LongVllm
) -> None:
    fake.script = _to_the_budget(1)
    got = streamed(rig)
    assert got.tokens == [7, 8, 9, 10]
    assert_recorded_as_received(rig, got)


@pytest.mark.parametrize("over", ["count", "bytes"])
def test_a_prompt_no_line_holds_is_refused_before_any_token_is_sent(
    rig: GatewayRig, fake: LongVllm, over: str
) -> None:
    body = BODY
    if over == "count":  # more ids than a line's field holds: 2 MiB of zeros
        prompt = [0] * (MAX_TOKENS + 1)
        why = f"the prompt would be {MAX_TOKENS + 1} tokens"
    else:  # a request of 2 MB leaves 6.4 MB for the output: 6.6 MB of prompt ids
        body = BODY | {"prompt": "a" * 2_000_000}
        prompt = [2**31 - 1] * 600_000
        why = "the output would take 6600008 bytes of its transcript line"  # and " x", [7]
    fake.script = (event(" x", [7], prompt=prompt), event(" y", [8], finish="length"), "[DONE]")
    got = streamed(rig, body)
    assert (got.tokens, got.text) == ([], "")
    (error,) = got.errors
    assert error.startswith(f"the engine failed mid-stream: {why}"), error
    assert rig.gateway.transcript.provenance(got.exchange_id) is None  # nothing given, nothing held
    assert recorded(rig) == []


def test_a_whole_answer_past_its_budget_is_a_502_written_nowhere(
    rig: GatewayRig, fake: LongVllm
) -> None:
    choice = {"index": 0, "finish_reason": "length", "token_ids": [7], "prompt_token_ids": [5]}
    choice["text"] = "€" * 2_900_000  # 8.7 MB in its line, in 2.9 M characters
    document = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": MODEL}
    answer = json.dumps(document | {"choices": [choice]}, ensure_ascii=False).encode()
    fake.whole = Answer(200, answer)
    response = httpx.post(f"{rig.url}/v1/completions", json=BODY, timeout=60)
    assert response.status_code == 502, response.text[:300]
    message = response.json()["error"]["message"]
    assert message.startswith(TOO_LONG), message
    assert f"has room for {BUDGET} beside the request" in message
    fake.whole = None
    assert httpx.post(f"{rig.url}/v1/completions", json=BODY, timeout=60).status_code == 200
    (answered,) = recorded(rig)  # the refused answer's line was never written
    assert answered.delivery == "delivered"


# --- a replay agrees -------------------------------------------------------------------------

#: 1.8 MB in a line, in 450 000 characters: four fit one line, five do not
PIECE = "😀" * 450_000


def _claim(workspace: TinyWorkspace, tmp_path: Path, fake: StreamingFakeVllm, stream: bool) -> Path:
    fixture = Fixture(workspace=workspace, transcripts=tmp_path / "claim")
    with gateway_running(fixture, fake) as rig:
        body = BODY | {"max_tokens": 6, "stream": stream}
        with httpx.stream("POST", f"{rig.url}/v1/completions", json=body, timeout=60) as answer:
            answer.read()
    (path,) = fixture.transcripts.iterdir()
    return path


def test_a_stream_cut_at_its_budget_replays_as_its_recorded_start(
    tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    claim = _claim(tiny_workspace, tmp_path, StreamingFakeVllm(pieces=[PIECE] * 6), stream=True)
    (cut,) = read_exchanges(claim)
    assert (cut.incomplete, len(cut.output_token_ids), cut.text) == ("engine_failed", 4, PIECE * 4)
    out = tmp_path / "replay.transcript.jsonl"
    report = replay(claim, tiny_workspace, StreamingFakeVllm(pieces=[PIECE] * 6), out)
    assert report.verdict is Verdict.INCOMPLETE, report.summary_lines()
    assert out.read_bytes() == claim.read_bytes()


def test_a_replay_past_the_budget_diverged(tiny_workspace: TinyWorkspace, tmp_path: Path) -> None:
    claim = _claim(tiny_workspace, tmp_path, StreamingFakeVllm(pieces=[" a"]), stream=False)
    out = tmp_path / "replay.transcript.jsonl"
    with pytest.raises(Divergence, match="exchange 0: the replay's output is not the claim's"):
        replay(claim, tiny_workspace, StreamingFakeVllm(pieces=[PIECE * 5]), out)
    assert not out.exists()


def test_a_claim_written_before_the_budget_replays_as_it_was(
    tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    """A line whose output is a byte past the budget, which a gateway with the budget never
    writes (its other fields are shorter than their longest): its faithful replay is it."""
    claim = _claim(tiny_workspace, tmp_path, StreamingFakeVllm(pieces=[" a"]), stream=False)
    (answered,) = read_exchanges(claim)
    budget = output_budget(len(canonical_request(answered.request)))
    room = (
        budget + 1 - Usage.of("", answered.output_token_ids, answered.prompt_token_ids).line_bytes
    )
    text = "😀" * (room // 4) + "a" * (room % 4)
    old = tmp_path / "old.transcript.jsonl"
    writer = TranscriptWriter(old, validate_transcript(claim).header)
    fields = answered.model_dump(mode="json") | {"text": text}
    del fields["index"], fields["record"]
    writer.append(fields)
    writer.close("stopped")
    out = tmp_path / "replay.transcript.jsonl"
    report = replay(old, tiny_workspace, StreamingFakeVllm(pieces=[text]), out)
    assert report.verdict is Verdict.IDENTICAL, report.summary_lines()
    assert out.read_bytes() == old.read_bytes()
