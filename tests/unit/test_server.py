"""The vLLM server client against a real local HTTP server (``http.server`` in a thread).

Each test scripts the answers of the server, request by request, and checks what the client
sent, how many times, what it waited between attempts, and what it returned or raised: 5xx and
timeouts and refused connections are retried with backoff, 4xx and malformed answers never.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from detserve.errors import ServerError
from detserve.runtime.vllm_client import Completion, ServedModel, TokenLogprob, VllmServer

from .fake_http import Answer, serving


@dataclass
class Script:
    """Answers per path, used in order (the last one repeats); the requests received."""

    answers: dict[str, list[Answer]] = field(default_factory=dict)
    received: list[tuple[str, str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, path: str) -> Answer:
        with self.lock:
            queue = self.answers.get(path) or [Answer(404, {"error": "no such path"})]
            return queue.pop(0) if len(queue) > 1 else queue[0]


@dataclass
class LocalServer:
    url: str
    script: Script
    sleeps: list[float]

    def client(self, **kwargs: Any) -> VllmServer:
        kwargs.setdefault("sleep", self.sleeps.append)
        return VllmServer(self.url, **kwargs)

    def posts(self) -> list[Any]:
        return [body for method, _, body in self.script.received if method == "POST"]


@pytest.fixture
def server() -> Iterator[LocalServer]:
    script = Script()

    def respond(method: str, path: str, body: Any) -> Answer:
        with script.lock:
            script.received.append((method, path, body))
        return script.next(path)

    with serving(respond) as port:
        yield LocalServer(f"http://127.0.0.1:{port}", script, [])


def completion_body(**overrides: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "text": " jumps over",
        "finish_reason": "length",
        "stop_reason": None,
        "token_ids": [11, 12, 13],
        "prompt_token_ids": [1, 2, 3, 4],
        "logprobs": {
            "text_offset": [0, 1, 2],
            "tokens": [" j", "umps", " over"],
            "token_logprobs": [-0.5, -1.25, -9999.0],
            "top_logprobs": [{" j": -0.5}, {"umps": -1.25}, {" over": -9999.0}],
        },
    }
    choice.update(overrides)
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "tiny-llama",
        "choices": [choice],
        "usage": {"prompt_tokens": 4, "completion_tokens": 3},
    }


def test_complete_sends_a_greedy_request_and_returns_typed_tokens(server: LocalServer) -> None:
    server.script.answers["/v1/completions"] = [Answer(body=completion_body())]
    with server.client(model="tiny-llama") as client:
        result = client.complete("The quick brown fox", max_tokens=3, seed=7, logprobs=1)
    assert server.posts() == [
        {
            "prompt": "The quick brown fox",
            "max_tokens": 3,
            "temperature": 0,
            "seed": 7,
            "n": 1,
            "stream": False,
            "return_token_ids": True,
            "model": "tiny-llama",
            "logprobs": 1,
        }
    ]
    assert result == Completion(
        model="tiny-llama",
        prompt_token_ids=(1, 2, 3, 4),
        token_ids=(11, 12, 13),
        text=" jumps over",
        finish_reason="length",
        logprobs=(
            TokenLogprob(" j", -0.5, ((" j", -0.5),)),
            TokenLogprob("umps", -1.25, (("umps", -1.25),)),
            TokenLogprob(" over", -9999.0, ((" over", -9999.0),)),
        ),
    )
    assert result.response == completion_body()
    assert server.sleeps == []


def test_token_id_prompt_and_no_logprobs(server: LocalServer) -> None:
    body = completion_body(logprobs=None)
    server.script.answers["/v1/completions"] = [Answer(body=body)]
    with server.client() as client:
        result = client.complete([1, 2, 3, 4], max_tokens=3, seed=0)
    sent = server.posts()[0]
    assert sent["prompt"] == [1, 2, 3, 4]
    assert "logprobs" not in sent
    assert "model" not in sent
    assert result.logprobs is None


def test_prompt_token_ids_at_the_top_level_are_accepted(server: LocalServer) -> None:
    body = completion_body()
    body["prompt_token_ids"] = body["choices"][0].pop("prompt_token_ids")
    server.script.answers["/v1/completions"] = [Answer(body=body)]
    with server.client() as client:
        assert client.complete("x", 3, 0, 1).prompt_token_ids == (1, 2, 3, 4)


def test_5xx_is_retried_with_backoff_then_succeeds(server: LocalServer) -> None:
    server.script.answers["/v1/completions"] = [
        Answer(500, "engine restarting"),
        Answer(503, "busy"),
        Answer(body=completion_body()),
    ]
    with server.client() as client:
        result = client.complete("x", 3, 0, 1)
    assert result.token_ids == (11, 12, 13)
    assert len(server.posts()) == 3
    assert server.sleeps == [0.5, 1.0]


def test_5xx_gives_up_after_three_retries(server: LocalServer) -> None:
    server.script.answers["/v1/completions"] = [Answer(502, "bad gateway")]
    with server.client() as client, pytest.raises(ServerError) as raised:
        client.complete("x", 3, 0)
    assert len(server.posts()) == 4
    assert server.sleeps == [0.5, 1.0, 2.0]
    assert "HTTP 502: bad gateway (after 4 attempts)" in raised.value.message
    assert raised.value.exit_code == 3


def test_retries_zero_sends_once(server: LocalServer) -> None:
    server.script.answers["/v1/completions"] = [Answer(503, "busy")]
    with server.client(retries=0) as client, pytest.raises(ServerError, match="HTTP 503"):
        client.complete("x", 3, 0)
    assert len(server.posts()) == 1
    assert server.sleeps == []


@pytest.mark.parametrize("status", [400, 404, 422])
def test_4xx_is_never_retried(server: LocalServer, status: int) -> None:
    server.script.answers["/v1/completions"] = [
        Answer(status, {"message": "The model `x` does not exist."})
    ]
    with server.client() as client, pytest.raises(ServerError) as raised:
        client.complete("x", 3, 0)
    assert len(server.posts()) == 1
    assert f"HTTP {status}" in raised.value.message
    assert "does not exist" in raised.value.diagnostics()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{not json", "not JSON"),
        ("", "not JSON"),
        ({"model": "m", "choices": []}, "unexpected response"),
        ({"model": "m"}, "unexpected response"),
        (completion_body(token_ids=["11", "12", "13"]), "unexpected response"),
        (completion_body(text=None), "unexpected response"),
        (completion_body(prompt_token_ids=None), "no prompt_token_ids"),
        (completion_body(token_ids=[11, 12]), "do not line up"),
        (completion_body(logprobs=None), "none came"),
    ],
)
def test_malformed_answers_are_errors_and_never_retried(
    server: LocalServer, body: str | dict[str, Any], expected: str
) -> None:
    server.script.answers["/v1/completions"] = [Answer(200, body)]
    with server.client() as client, pytest.raises(ServerError, match=expected):
        client.complete("x", 3, 0, logprobs=1)
    assert len(server.posts()) == 1
    assert server.sleeps == []


def test_two_choices_are_refused(server: LocalServer) -> None:
    body = completion_body()
    body["choices"].append(dict(body["choices"][0]))
    server.script.answers["/v1/completions"] = [Answer(body=body)]
    with server.client() as client, pytest.raises(ServerError) as raised:
        client.complete("x", 3, 0)
    assert "choices: List should have at most 1 item" in raised.value.diagnostics()


def test_timeout_is_retried(server: LocalServer) -> None:
    # The first answer comes after the client's timeout, the second at once. How long this takes
    # is not asserted (speed belongs to the benchmarks): had the client waited for the slow
    # answer instead of giving up, it would have sent one request, not two.
    server.script.answers["/v1/completions"] = [
        Answer(body=completion_body(), delay_s=1.0),
        Answer(body=completion_body()),
    ]
    with server.client(timeout_s=0.3) as client:
        result = client.complete("x", 3, 0, 1)
    assert result.token_ids == (11, 12, 13)
    first, retry = server.posts()  # exactly one retry
    assert retry == first, "a retry repeats the same greedy request"
    assert server.sleeps == [0.5]


def test_timeout_every_time_is_an_error(server: LocalServer) -> None:
    server.script.answers["/v1/completions"] = [Answer(body=completion_body(), delay_s=0.5)]
    with server.client(timeout_s=0.1, retries=1) as client, pytest.raises(ServerError) as raised:
        client.complete("x", 3, 0)
    assert "timed out (ReadTimeout) (after 2 attempts)" in raised.value.message


def test_refused_connection_is_retried_then_an_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on the port now
    sleeps: list[float] = []
    with (
        VllmServer(f"http://127.0.0.1:{port}", sleep=sleeps.append) as client,
        pytest.raises(ServerError) as raised,
    ):
        client.models()
    assert "connection failed" in raised.value.message
    assert "(after 4 attempts)" in raised.value.message
    assert sleeps == [0.5, 1.0, 2.0]


def test_health_is_never_retried(server: LocalServer) -> None:
    server.script.answers["/health"] = [Answer(503, ""), Answer(200, "")]
    with server.client() as client:
        with pytest.raises(ServerError, match="HTTP 503"):
            client.health()
        client.health()
    assert [path for _, path, _ in server.script.received] == ["/health", "/health"]
    assert server.sleeps == []


def test_models_and_version(server: LocalServer) -> None:
    server.script.answers["/v1/models"] = [
        Answer(
            body={
                "object": "list",
                "data": [
                    {"id": "tiny-llama", "object": "model", "root": "detserve/tiny-llama"},
                    {"id": "lora", "object": "model", "root": None},
                ],
            }
        )
    ]
    server.script.answers["/version"] = [Answer(body={"version": "0.32.0"})]
    with server.client() as client:
        assert client.models() == [
            ServedModel("tiny-llama", "detserve/tiny-llama"),
            ServedModel("lora", None),
        ]
        assert client.version() == "0.32.0"


def test_models_with_a_wrong_shape(server: LocalServer) -> None:
    server.script.answers["/v1/models"] = [Answer(body={"data": [{"name": "tiny"}]})]
    with server.client() as client, pytest.raises(ServerError) as raised:
        client.models()
    assert "data.0.id" in raised.value.diagnostics()
