"""Nothing the gateway answers is ever uvicorn's plain-text 500, whatever fails and wherever.

Once, under a hostile load on the real engine, a request was answered 500 with a body that was
not JSON (its log was not kept). uvicorn writes ``Internal Server Error`` as text when anything
escapes the application that Starlette's error layer does not catch (a ``BaseException`` such as
a leaked ``CancelledError``, an error handler's own error) or when the application returns
without answering. Each is injected here at its layer, beside each shape of an engine's failure
(a body that is not JSON, nested past the parser's depth, a lone surrogate, a socket reset, an
answer its parser refuses): every answer is JSON in OpenAI's shape, an unexpected fault turns
health 503 until a check passes (an engine's fault does not), every slot is given back, and the
transcript validates and says what happened.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp.http_exceptions import BadHttpMessage

from detserve.gateway.guards import HostPolicy
from detserve.gateway.relay import Relay
from detserve.gateway.upstream import Output
from detserve.runlog.series import validate_transcript_dir
from detserve.runlog.transcript import read_exchanges

from .committed import TinyWorkspace
from .fake_http import Answer
from .gateway_rig import Fixture, GatewayRig, StreamingFakeVllm, gateway_running

MODEL = "tiny-llama"
BODY = {"model": MODEL, "prompt": "Hi", "max_tokens": 3}
#: JSON nested deeper than Python's parser recurses: ``json.loads`` raises RecursionError
TOO_DEEP = b"[" * 200_000


@dataclass
class FailingFakeVllm(StreamingFakeVllm):
    """The fake vLLM, answering a generation with ``failure`` when one is set."""

    failure: Answer | None = None

    def answer(self, method: str, path: str, body: Any) -> Answer:
        if method == "POST" and self.failure is not None:
            with self.lock:
                self.requests.append((path, body))
            return self.failure
        return super().answer(method, path, body)


@pytest.fixture
def fake() -> FailingFakeVllm:
    return FailingFakeVllm()


@pytest.fixture
def rig(
    tiny_workspace: TinyWorkspace, tmp_path: Any, fake: FailingFakeVllm
) -> Iterator[GatewayRig]:
    fixture = Fixture(workspace=tiny_workspace, transcripts=tmp_path / "transcripts")
    fixture.options = {"queue_size": 0, "identity_interval_s": 0.2}
    with gateway_running(fixture, fake) as running:
        yield running


class Ticks:
    """The gateway's health watcher, held before its next tick while a test reads what a fault
    left: that tick clears the doubt at a moment the test does not choose (within 0.2 s here,
    less than a loaded machine may take between the 500 and the next request)."""

    def __init__(self, monitor: Any) -> None:
        self.real = monitor.watch_tick
        self.running = threading.Event()
        self.running.set()
        monitor.watch_tick = self._tick

    def _tick(self) -> None:
        self.running.wait()
        self.real()

    def hold(self) -> None:
        self.running.clear()

    def let_run(self) -> None:
        self.running.set()


@pytest.fixture
def ticks(rig: GatewayRig) -> Iterator[Ticks]:
    held = Ticks(rig.gateway.monitor)
    try:
        yield held
    finally:
        held.let_run()  # before the rig stops the gateway: no tick is left waiting


def post(rig: GatewayRig, body: Any = BODY) -> httpx.Response:
    return httpx.post(f"{rig.url}/v1/completions", json=body, timeout=30)


def health(rig: GatewayRig) -> httpx.Response:
    return httpx.get(f"{rig.url}/health", timeout=5)


def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json", response.text[:300]
    document = response.json()
    assert set(document) == {"error"}
    assert set(document["error"]) == {"message", "type", "param", "code"}
    assert isinstance(document["error"]["message"], str)
    return dict(document["error"])


def assert_doubted_then_healthy(rig: GatewayRig, ticks: Ticks, named: str) -> None:
    """Health 503 naming the fault while the watcher is held, 200 once its next check passed."""
    unhealthy = health(rig)
    assert unhealthy.status_code == 503
    assert f"unexpected error answering a request ({named})" in unhealthy.json()["reason"]
    ticks.let_run()
    eventually(lambda: health(rig).status_code == 200)


def assert_released_and_answering(rig: GatewayRig) -> None:
    eventually(lambda: rig.gateway.slots.pending == rig.gateway.slots.in_flight == 0)
    assert post(rig).status_code == 200  # one slot, no queue: a kept slot would refuse it


def stream_events(rig: GatewayRig, body: Any) -> tuple[httpx.Response, list[str]]:
    """A stream's events, read to its end (raises if the connection is cut instead)."""
    with httpx.stream("POST", f"{rig.url}/v1/completions", json=body, timeout=30) as response:
        events = [line[len("data: ") :] for line in response.iter_lines() if line]
    return response, events


# --- what escapes Starlette's error layer --------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_leaked_cancellation_is_a_json_500_and_health_503(
    rig: GatewayRig, ticks: Ticks, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """A CancelledError that nobody asked of the request's task (a cancelled inner task's
    result, a timer's leaked cancel) is a BaseException: Starlette does not catch it, and
    uvicorn answered it ``Internal Server Error`` as text."""
    ticks.hold()

    async def leaked(*_: object) -> Any:
        raise asyncio.CancelledError

    monkeypatch.setattr(Relay, "stream" if stream else "answer", leaked)
    error = assert_openai_error(post(rig, BODY | {"stream": stream}), 500)
    assert "CancelledError" in error["message"]
    monkeypatch.undo()
    assert_doubted_then_healthy(rig, ticks, "CancelledError")
    assert_released_and_answering(rig)


def test_a_route_that_returns_without_answering_is_a_json_500(
    rig: GatewayRig, ticks: Ticks, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks.hold()

    async def silent(*_: object) -> None:
        return None

    monkeypatch.setattr(Relay, "stream", silent)
    assert_openai_error(post(rig, BODY | {"stream": True}), 500)
    monkeypatch.undo()
    assert_doubted_then_healthy(rig, ticks, "RuntimeError")
    assert_released_and_answering(rig)


def test_an_error_handler_that_fails_is_still_a_json_500(
    rig: GatewayRig, ticks: Ticks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 500 handler's own fault escapes Starlette's error layer."""
    ticks.hold()
    monitor = rig.gateway.monitor
    real_doubt = monitor.doubt
    calls: list[str] = []

    def doubt_failing_once(reason: str, *, full: bool = False) -> None:
        calls.append(reason)
        if len(calls) == 1:
            raise LookupError("the handler's own fault")
        real_doubt(reason, full=full)

    async def broken(*_: object) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(monitor, "doubt", doubt_failing_once)
    monkeypatch.setattr(Relay, "answer", broken)
    assert_openai_error(post(rig), 500)
    monkeypatch.undo()
    assert_doubted_then_healthy(rig, ticks, "LookupError")
    assert_released_and_answering(rig)


def test_an_error_in_a_guard_before_routing_is_a_json_500(
    rig: GatewayRig, ticks: Ticks, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks.hold()

    def broken(*_: object) -> str | None:
        raise ValueError("a fault in the Host check")

    monkeypatch.setattr(HostPolicy, "host_refusal", broken)
    assert_openai_error(post(rig), 500)
    monkeypatch.undo()
    assert_doubted_then_healthy(rig, ticks, "ValueError")
    assert_released_and_answering(rig)


def test_a_cancellation_leaked_mid_stream_ends_the_stream_with_an_error_event(
    rig: GatewayRig, ticks: Ticks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a stream has begun its status cannot change: it ends with an error event in
    OpenAI's shape (not a cut connection), and its line says the gateway failed."""
    ticks.hold()
    real_add = Output.add_chunk
    seen: list[Any] = []

    def leaking(self: Output, chunk: Any) -> None:
        seen.append(chunk)
        if len(seen) == 2:
            raise asyncio.CancelledError
        real_add(self, chunk)

    monkeypatch.setattr(Output, "add_chunk", leaking)
    response, events = stream_events(rig, BODY | {"max_tokens": 5, "stream": True})
    assert response.status_code == 200
    assert len(events) >= 1
    last = json.loads(events[-1])
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert "[DONE]" not in events
    monkeypatch.undo()
    assert_doubted_then_healthy(rig, ticks, "CancelledError")
    assert_released_and_answering(rig)
    rig.stop()
    validate_transcript_dir(rig.transcripts)
    (segment,) = sorted(rig.transcripts.iterdir())
    failed, answered = read_exchanges(segment)
    assert (failed.incomplete, failed.delivery) == ("gateway_failed", "partial")
    assert answered.delivery == "delivered"


# --- every shape of an engine's failure: the engine's fault, never a raw body or a doubt -------

#: (the engine's answer, the status the client gets)
ENGINE_FAILURES: dict[str, tuple[Answer, int]] = {
    "500 not JSON": (Answer(500, b"Internal Server Error"), 502),
    "400 HTML": (Answer(400, b"<html><body>Bad Request</body></html>"), 400),
    "400 nested too deep": (Answer(400, TOO_DEEP), 400),
    "400 lone surrogate": (Answer(400, b'{"error": {"message": "bad \\ud800 grammar"}}'), 400),
    "400 error not an object": (Answer(400, b'{"error": ["a", "list"]}'), 400),
    "500 empty": (Answer(500, b""), 502),
    "200 not JSON": (Answer(200, b"Internal Server Error"), 502),
    "200 nested too deep": (Answer(200, TOO_DEEP), 502),
}


#: every failure whole, and streamed where the engine refuses before its stream: a stream's 200
#: is an event stream (test_an_engine_stream_nested_too_deep_is_the_engine_s_failure)
FAILURE_CASES = [
    pytest.param(failure, stream, id=f"{failure}-{'streamed' if stream else 'whole'}")
    for failure, (answer, _) in ENGINE_FAILURES.items()
    for stream in (False, True)
    if not (stream and answer.status == 200)
]


@pytest.mark.parametrize(("failure", "stream"), FAILURE_CASES)
def test_an_engine_failure_is_answered_in_openai_shape_without_doubt(
    rig: GatewayRig, fake: FailingFakeVllm, failure: str, stream: bool
) -> None:
    answer, status = ENGINE_FAILURES[failure]
    fake.failure = answer
    error = assert_openai_error(post(rig, BODY | {"stream": stream}), status)
    assert error["message"].startswith("the engine")
    fake.failure = None
    assert "unexpected" not in str(health(rig).json()["reason"])
    eventually(lambda: health(rig).status_code == 200)
    assert_released_and_answering(rig)
    rig.stop()
    validate_transcript_dir(rig.transcripts)


def test_an_engine_stream_nested_too_deep_is_the_engine_s_failure(
    rig: GatewayRig, fake: FailingFakeVllm
) -> None:
    fake.failure = Answer(events=(TOO_DEEP.decode(),))
    response, events = stream_events(rig, BODY | {"stream": True})
    assert response.status_code == 200
    (event,) = events
    assert "the engine failed mid-stream: RecursionError" in json.loads(event)["error"]["message"]
    fake.failure = None
    eventually(lambda: health(rig).status_code == 200)
    assert_released_and_answering(rig)


@pytest.mark.parametrize(
    "raised",
    [
        ConnectionResetError(104, "Connection reset by peer"),
        BadHttpMessage("a malformed answer"),
        asyncio.IncompleteReadError(b"", 10),
        aiohttp.ClientPayloadError("cut"),
        aiohttp.ServerDisconnectedError(),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_a_hop_to_the_engine_failing_in_any_way_is_a_502(
    rig: GatewayRig, monkeypatch: pytest.MonkeyPatch, raised: BaseException
) -> None:
    """What aiohttp lets through unwrapped (a reset socket, its parser's refusal) is the
    engine's failure (502), not the gateway's (500 and health 503)."""

    async def failing(*_: object) -> bytes:
        raise raised

    monkeypatch.setattr(aiohttp.ClientResponse, "read", failing)
    error = assert_openai_error(post(rig), 502)
    assert type(raised).__name__ in error["message"]
    monkeypatch.undo()
    assert "unexpected" not in str(health(rig).json()["reason"])
    assert_released_and_answering(rig)


def completion(text: Any, token_ids: list[Any]) -> bytes:
    """A whole completion as the fake vLLM answers it, with ``text`` and ``token_ids``."""
    choice = {"index": 0, "finish_reason": "length", "token_ids": token_ids, "text": text}
    document = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": MODEL}
    return json.dumps(document | {"choices": [choice | {"prompt_token_ids": [1, 2]}]}).encode()


@pytest.mark.parametrize(
    "body",
    [
        completion("a\ud800b", [5, 6, 7]),  # a lone surrogate: JSON spells it, UTF-8 cannot
        completion(7, [5, 6, 7]),  # a text that is not a string
        completion("abc", ["x", 6, 7]),  # a token id no transcript line holds
    ],
    ids=["lone surrogate", "text not a string", "token id not a number"],
)
def test_an_engine_answer_no_line_can_hold_is_a_502_written_nowhere(
    rig: GatewayRig, fake: FailingFakeVllm, body: bytes
) -> None:
    """It was a 500 saying the gateway refuses until restarted, while health stayed 200."""
    fake.failure = Answer(200, body)
    error = assert_openai_error(post(rig), 502)
    assert "restarted" not in error["message"]
    fake.failure = None
    eventually(lambda: health(rig).status_code == 200)
    assert_released_and_answering(rig)
    rig.stop()
    validate_transcript_dir(rig.transcripts)
    (segment,) = sorted(rig.transcripts.iterdir())
    (answered,) = read_exchanges(segment)  # the failed answer's line was never written
    assert answered.delivery == "delivered"


def test_an_engine_stream_with_a_lone_surrogate_fails_as_the_engine_s(
    rig: GatewayRig, fake: FailingFakeVllm
) -> None:
    chunks = [
        {"index": 0, "token_ids": [5], "text": "a", "prompt_token_ids": [1, 2]},
        {"index": 0, "token_ids": [6], "text": "\ud800"},
        {"index": 0, "token_ids": [7], "text": "c", "finish_reason": "length"},
    ]
    events = [json.dumps({"id": "c", "object": "text_completion", "choices": [c]}) for c in chunks]
    fake.failure = Answer(events=(*events, "[DONE]"))
    response, received = stream_events(rig, BODY | {"stream": True})
    assert response.status_code == 200
    assert "the engine failed mid-stream" in json.loads(received[-1])["error"]["message"]
    fake.failure = None
    eventually(lambda: health(rig).status_code == 200)
    assert_released_and_answering(rig)
    rig.stop()
    validate_transcript_dir(rig.transcripts)
    (segment,) = sorted(rig.transcripts.iterdir())
    cut, _ = read_exchanges(segment)
    assert (cut.incomplete, cut.output_token_ids, cut.text) == ("engine_failed", (5,), "a")


def test_a_leaked_cancellation_is_counted_a_5xx(
    rig: GatewayRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def leaked(*_: object) -> Any:
        raise asyncio.CancelledError

    monkeypatch.setattr(Relay, "answer", leaked)
    assert_openai_error(post(rig), 500)
    monkeypatch.undo()
    scraped = httpx.get(f"{rig.url}/metrics", timeout=5).text
    assert (
        'detserve_gateway_requests_total{outcome="5xx",route="/v1/completions"} 1.0' in scraped
    ), scraped
