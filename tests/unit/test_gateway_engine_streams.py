"""An engine's stream that is not vLLM's: the transcript still says what the client was sent.

The gateway streams an engine's chunks to its client as they come and records the exchange at
the end. A stream that breaks vLLM's form (the prompt's token ids missing from the first chunk
or changed later, a token past ``max_tokens``, a ``finish_reason`` no line holds, a chunk after
the one that finished the choice, no ``[DONE]``) is the engine's failure: the breaking chunk is
neither kept nor sent, and the exchange is recorded incomplete with every token the client got.
Before, such a stream gave the client tokens that no line held (nothing recorded), or a line of
tokens the client never got recorded as delivered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from .fake_http import Answer
from .gateway_rig import Fixture, GatewayRig, StreamingFakeVllm, gateway_running

BODY = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 3, "stream": True}


@dataclass
class ScriptedVllm(StreamingFakeVllm):
    """The rig's fake vLLM, streaming the events of ``script`` instead of its own."""

    script: tuple[str, ...] = ()

    def answer(self, method: str, path: str, body: Any) -> Answer:
        if method == "POST" and body.get("stream"):
            self.requests.append((path, body))
            return Answer(events=self.script)
        return super().answer(method, path, body)


def chunk(tokens: list[int], finish: str | None = None, prompt: list[int] | None = None) -> str:
    choice: dict[str, Any] = {"index": 0, "text": " x", "token_ids": tokens}
    choice["finish_reason"] = finish
    if prompt is not None:
        choice["prompt_token_ids"] = prompt
    document = {"id": "c", "object": "text_completion", "created": 1, "model": "tiny-llama"}
    return json.dumps(document | {"choices": [choice]})


USAGE = json.dumps({"id": "c", "object": "text_completion", "choices": [], "usage": {}})
FIRST = chunk([7], prompt=[5, 6])
#: streams that are not vLLM's, each breaking its form in one way
BROKEN = {
    "no-done": (FIRST, chunk([8]), chunk([9], "length")),
    "no-prompt-ids": (chunk([7]), chunk([8], "length"), "[DONE]"),
    "no-prompt-ids-cut": (chunk([7]), chunk([8])),
    "prompt-ids-changed": (FIRST, chunk([8], "length", prompt=[1, 2, 3]), "[DONE]"),
    "past-max-tokens": (FIRST, chunk([8, 9, 10], "length"), "[DONE]"),
    "token-after-finish": (FIRST, chunk([8], "length"), chunk([9]), "[DONE]"),
    "finished-twice": (FIRST, chunk([8], "length"), chunk([9], "stop"), "[DONE]"),
    "usage-after-finish": (FIRST, chunk([8], "length"), USAGE, "[DONE]"),
    "negative-token": (FIRST, chunk([-8], "length"), "[DONE]"),
    "boolean-token": (FIRST, chunk([True], "length"), "[DONE]"),  # type: ignore[list-item]
    # a finish_reason no line holds: the line was refused after the tokens before it were sent
    "finish-reason-empty": (FIRST, chunk([8], ""), "[DONE]"),
    "finish-reason-unrecordable": (FIRST, chunk([8], "Stop!"), "[DONE]"),
}


@pytest.fixture
def fake() -> ScriptedVllm:
    return ScriptedVllm()


@pytest.fixture
def rig(fixture: Fixture, fake: ScriptedVllm) -> Iterator[GatewayRig]:
    with gateway_running(fixture, fake) as running:
        yield running


def streamed(rig: GatewayRig) -> tuple[list[int], list[dict[str, Any]], str]:
    """The token ids the client got, the error events, and the exchange's id."""
    tokens: list[int] = []
    errors: list[dict[str, Any]] = []
    with httpx.stream("POST", f"{rig.url}/v1/completions", json=BODY, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            if "error" in event:
                errors.append(event)
            else:
                tokens += event["choices"][0]["token_ids"]
        return tokens, errors, response.headers["X-Detserve-Id"]


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_stream_that_is_not_vllms_is_recorded_with_what_the_client_got(
    name: str, rig: GatewayRig, fake: ScriptedVllm
) -> None:
    fake.script = BROKEN[name]
    tokens, errors, exchange_id = streamed(rig)
    assert len(errors) == 1, errors
    assert "the engine failed mid-stream" in errors[0]["error"]["message"]
    provenance = rig.gateway.transcript.provenance(exchange_id)
    if provenance is None:  # nothing recorded: then nothing was given
        assert tokens == []
        return
    assert provenance.incomplete == "engine_failed"
    assert provenance.delivery == ("partial" if tokens else "undelivered")
    (segment,) = sorted(rig.transcripts.iterdir())
    (line,) = [json.loads(text) for text in segment.read_text().splitlines()[1:]]
    assert line["output_token_ids"][: len(tokens)] == tokens, "the client got what no line holds"
    assert line["finish_reason"] is None


def test_a_stream_in_vllms_form_is_delivered_whole(rig: GatewayRig, fake: ScriptedVllm) -> None:
    """The scripted fake's own form passes: the cases above break one thing each."""
    fake.script = (FIRST, chunk([8]), chunk([9], "length"), "[DONE]")
    tokens, errors, exchange_id = streamed(rig)
    assert (tokens, errors) == ([7, 8, 9], [])
    provenance = rig.gateway.transcript.provenance(exchange_id)
    assert provenance is not None
    assert (provenance.incomplete, provenance.delivery) == (None, "delivered")
