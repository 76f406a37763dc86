"""The gateway against a fake vLLM: the official ``openai`` client for answers, raw HTTP for the
refusals and faults.

Every answer must carry its provenance and be in the transcript before the client has it; every
refusal is OpenAI's error shape naming the field, and reaches no engine; every fault leaves a
transcript that validates, with nothing answered left out.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from detserve import api
from detserve.errors import UsageError
from detserve.gateway import verification
from detserve.gateway.app import Gateway
from detserve.gateway.listener import GatewayServer, check_bind
from detserve.profile import load_profile
from detserve.runlog import transcript as transcript_module
from detserve.runlog.transcript import (
    output_sha256,
    read_exchanges,
    request_sha256,
    validate_transcript,
)
from detserve.runtime.container_spec import build_container_spec

from .committed import CliRunner
from .containers import faithful_container, pinned_image
from .fake_http import Answer, serving
from .gateway_rig import (
    Fixture,
    GatewayRig,
    StreamingFakeVllm,
    gateway_profile,
    gateway_running,
    tokens_of,
)
from .test_sampling_faults import FakeEngine

MODEL = "tiny-llama"


def only_segment(rig: GatewayRig) -> Path:
    (path,) = sorted(rig.transcripts.iterdir())
    return path


def expected_text(prompt: str, max_tokens: int) -> str:
    return "".join(f" t{token}" for token in tokens_of(prompt, max_tokens))


# --- answers, through the official client -----------------------------------------------------


def test_a_completion_carries_its_provenance_and_is_recorded(rig: GatewayRig) -> None:
    raw = rig.client().completions.with_raw_response.create(
        model=MODEL, prompt="The quick brown fox", max_tokens=5, temperature=0
    )
    completion = raw.parse()
    assert completion.choices[0].text == expected_text("The quick brown fox", 5)
    provenance = completion.model_extra["detserve"]
    assert raw.headers["X-Detserve-Id"] == provenance["id"]
    assert raw.headers["X-Detserve-Pins-Sha256"] == rig.gateway.verified.pins_sha256
    assert raw.headers["X-Detserve-Request-Sha256"] == provenance["request_sha256"]
    assert raw.headers["X-Detserve-Output-Sha256"] == provenance["output_sha256"]
    # the id resolves, to the same record
    resolved = httpx.get(f"{rig.url}/v1/provenance/{provenance['id']}").json()
    assert resolved == provenance
    # greedy, the profile's seed, token ids asked for; nothing of the client's beyond that
    ((path, sent),) = rig.fake.requests
    assert path == "/v1/completions"
    assert sent == {
        "model": MODEL,
        "max_tokens": 5,
        "temperature": 0,
        "seed": 0,
        "n": 1,
        "stream": False,
        "return_token_ids": True,
        "prompt": "The quick brown fox",
    }
    rig.stop()
    summary = validate_transcript(only_segment(rig))
    assert summary.footer is not None
    assert summary.footer.reason == "stopped"
    (exchange,) = read_exchanges(summary.path)
    assert exchange.id == provenance["id"]
    assert exchange.request.prompt == "The quick brown fox"
    assert request_sha256(exchange.request) == provenance["request_sha256"]
    assert output_sha256(exchange.output_token_ids, exchange.text) == provenance["output_sha256"]
    assert exchange.incomplete is None
    assert exchange.finish_reason == "length"


def test_a_streamed_completion_is_what_the_client_reads(rig: GatewayRig) -> None:
    stream = rig.client().completions.create(
        model=MODEL, prompt="1, 2, 3,", max_tokens=6, stream=True
    )
    chunks = list(stream)
    assert "".join(chunk.choices[0].text for chunk in chunks) == expected_text("1, 2, 3,", 6)
    assert chunks[-1].choices[0].finish_reason == "length"
    provenance = chunks[-1].model_extra["detserve"]
    rig.stop()
    (exchange,) = read_exchanges(only_segment(rig))
    assert exchange.id == provenance["id"]
    assert list(exchange.output_token_ids) == tokens_of("1, 2, 3,", 6)
    assert output_sha256(exchange.output_token_ids, exchange.text) == provenance["output_sha256"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_chat_is_answered_and_recorded(rig: GatewayRig, stream: bool) -> None:
    messages: list[Any] = [{"role": "user", "content": "Say hi"}]
    client = rig.client()
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=4, stream=True
            )
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
        provenance = chunks[-1].model_extra["detserve"]
    else:
        answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        text = answer.choices[0].message.content or ""
        provenance = answer.model_extra["detserve"]
    assert text == expected_text(json.dumps(messages, sort_keys=True), 4)
    rig.stop()
    (exchange,) = read_exchanges(only_segment(rig))
    assert exchange.request.kind == "chat"
    assert [m.model_dump() for m in exchange.request.messages or ()] == messages
    assert exchange.text == text
    assert exchange.id == provenance["id"]


def test_a_json_schema_response_format_passes_through_and_is_recorded(rig: GatewayRig) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    rig.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "JSON please"}],
        max_tokens=3,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    ((_, sent),) = rig.fake.requests
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    assert sent["response_format"] == response_format  # as the client sent it, name included
    assert "structured_outputs" not in sent
    rig.stop()
    (exchange,) = read_exchanges(only_segment(rig))
    assert exchange.request.response_format == json.dumps(response_format, separators=(",", ":"))
    assert exchange.request.response_format.encode() in rig.fake.bodies[0]


def test_models_and_health_name_the_pins(rig: GatewayRig) -> None:
    assert [model.id for model in rig.client().models.list()] == [MODEL]
    health = httpx.get(f"{rig.url}/health")
    assert health.status_code == 200
    document = health.json()
    assert document["status"] == "ok"
    assert document["pins"]["image"] == rig.gateway.verified.pins.image
    assert document["container"]["id"] == rig.engine.container.id
    # the fake's container has no address of its own: the published port
    assert document["upstream"] == rig.gateway.verified.published_url


def test_no_server_software_is_named_and_no_forwarded_header_is_believed(rig: GatewayRig) -> None:
    """Nothing is in front of the gateway that it trusts: a loopback client's X-Forwarded-For
    is its own claim (uvicorn would otherwise believe it from 127.0.0.1)."""
    health = httpx.get(
        f"{rig.url}/health",
        headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"},
    )
    assert health.status_code == 200
    assert "server" not in health.headers
    assert rig.server.server.config.proxy_headers is False


# --- refusals: raw HTTP, OpenAI's error shape, nothing reaches the engine ---------------------


def post(rig: GatewayRig, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{rig.url}{path}", timeout=30, **kwargs)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 0.7}, "temperature"),
        ({"seed": 7}, "seed"),
        ({"n": 2}, "n"),
        ({"top_p": 0.5}, "top_p"),
        ({"logprobs": 2}, "logprobs"),
        ({"frobnicate": True}, "frobnicate"),
        ({"model": "other"}, "model"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"structured_outputs": {"json_object": False}}, "structured_outputs.json_object"),
        ({"max_tokens": 100000}, "max_tokens"),
    ],
)
def test_a_completion_outside_the_policy_is_refused_naming_the_field(
    rig: GatewayRig, body: dict[str, Any], param: str
) -> None:
    response = post(
        rig, "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2} | body
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert rig.fake.requests == []


@pytest.mark.parametrize(
    "override",
    [
        {"chat_template": "{{ messages }}"},
        {"chat_template_kwargs": {"enable_thinking": True}},
        {"add_generation_prompt": False},
    ],
)
def test_a_chat_template_override_is_refused(rig: GatewayRig, override: dict[str, Any]) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]} | override
    response = post(rig, "/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == next(iter(override))
    assert "not the pinned template" in response.json()["error"]["message"]
    assert rig.fake.requests == []


def test_the_profile_seed_is_accepted_when_given(rig: GatewayRig) -> None:
    response = post(
        rig, "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2, "seed": 0}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "content", [b'{"model": "tiny-llama", "prompt": ', b"\xff\xfe", b'{"a": 1, "a": 2}', b"NaN"]
)
def test_a_malformed_body_is_a_400(rig: GatewayRig, content: bytes) -> None:
    response = post(
        rig, "/v1/completions", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "not valid JSON" in message or "not UTF-8" in message
    assert rig.fake.requests == []


def test_a_10_mb_body_is_refused_by_the_documented_limit(rig: GatewayRig) -> None:
    from detserve.gateway.app import MAX_BODY_BYTES

    body = json.dumps({"model": MODEL, "prompt": "x" * (10 * 1024 * 1024)}).encode()
    json_type = {"Content-Type": "application/json"}
    response = post(rig, "/v1/completions", content=body, headers=json_type)
    assert response.status_code == 413
    assert f"limit of {MAX_BODY_BYTES} bytes" in response.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit still holds while reading
        for _ in range(10):
            yield b" " * (1024 * 1024)

    response = post(rig, "/v1/completions", content=chunks(), headers=json_type)
    assert response.status_code == 413
    assert rig.fake.requests == []


# --- faults -----------------------------------------------------------------------------------


def test_a_full_disk_fails_the_request_and_no_answer_is_given(
    rig: GatewayRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = transcript_module._write

    def half_then_full(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transcript_module, "_write", half_then_full)
    response = post(rig, "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 3})
    assert response.status_code == 500
    assert "could not be recorded in the transcript, so it is not given" in response.text
    assert expected_text("Hi", 3) not in response.text  # the output is nowhere in the answer
    assert str(rig.transcripts) not in response.text
    assert len(rig.fake.requests) == 1
    # from now on: unhealthy, and nothing more reaches the engine
    assert httpx.get(f"{rig.url}/health").status_code == 503
    again = post(rig, "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 3})
    assert again.status_code == 503
    assert len(rig.fake.requests) == 1
    monkeypatch.setattr(transcript_module, "_write", real_write)
    rig.stop()
    # the half line was cut off: the segment validates up to its cut, and says it was cut
    summary = validate_transcript(only_segment(rig), allow_cut=True)
    assert summary.cut
    assert summary.n_exchanges == 0


def test_a_full_disk_mid_stream_never_sends_the_final_event(
    rig: GatewayRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transcript_module, "_write", full)
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": True}
    response = post(rig, "/v1/completions", json=body)
    events = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    # the tokens before the last went out; then an error, and no finish chunk, no [DONE]
    *tokens, error = [json.loads(event) for event in events]
    assert len(tokens) == 3
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in tokens)
    assert "could not be recorded" in error["error"]["message"]


def test_a_snapshot_changed_while_serving_turns_health_503(rig: GatewayRig) -> None:
    weights = rig.workspace.blob_of("model.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    rig.gateway.monitor.reverify_snapshot()  # what the periodic task does
    health = httpx.get(f"{rig.url}/health")
    assert health.status_code == 503
    reason = health.json()["reason"]
    assert reason.startswith("snapshot re-verification failed: changed: ./model.safetensors")
    refused = post(rig, "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
    assert refused.status_code == 503
    assert rig.fake.requests == []


def test_the_periodic_reverification_runs_by_itself(
    fixture: Fixture, fake: StreamingFakeVllm
) -> None:
    fixture.options = {"reverify_interval_s": 0.2}
    with gateway_running(fixture, fake) as rig:
        weights = rig.workspace.blob_of("model.safetensors")
        weights.write_bytes(weights.read_bytes() + b"\0")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and httpx.get(f"{rig.url}/health").status_code == 200:
            time.sleep(0.05)
        assert httpx.get(f"{rig.url}/health").status_code == 503


@pytest.mark.parametrize("change", ["restarted", "gone"])
def test_a_changed_container_turns_health_503(rig: GatewayRig, change: str) -> None:
    if change == "restarted":
        rig.engine.restart()
    else:
        rig.engine.gone = True
    rig.gateway.monitor.check_identity()
    health = httpx.get(f"{rig.url}/health")
    assert health.status_code == 503
    assert ("changed" if change == "restarted" else "is gone") in health.json()["reason"]


def test_a_client_leaving_mid_stream_leaves_an_incomplete_line(
    rig: GatewayRig, fake: StreamingFakeVllm
) -> None:
    fake.event_delay_s = 0.1
    with httpx.stream(
        "POST",
        f"{rig.url}/v1/completions",
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 20, "stream": True},
    ) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
    assert json.loads(first[5:])["choices"][0]["text"]
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline
        and rig.gateway.transcript.provenance(response.headers["X-Detserve-Id"]) is None
    ):
        time.sleep(0.05)
    rig.stop()
    (exchange,) = read_exchanges(only_segment(rig))
    assert exchange.incomplete == "client_disconnected"
    assert exchange.finish_reason is None
    assert 1 <= len(exchange.output_token_ids) < 20


def test_an_engine_killed_mid_stream_leaves_an_incomplete_line(
    rig: GatewayRig, fake: StreamingFakeVllm
) -> None:
    fake.drop_after = 3
    stream = rig.client().completions.create(model=MODEL, prompt="Hi", max_tokens=8, stream=True)
    with pytest.raises(openai.APIError, match="the engine failed mid-stream"):
        list(stream)
    rig.stop()
    (exchange,) = read_exchanges(only_segment(rig))
    assert exchange.incomplete == "engine_failed"
    assert list(exchange.output_token_ids) == tokens_of("Hi", 8)[:3]


def test_a_full_queue_is_a_429_with_retry_after(fixture: Fixture, fake: StreamingFakeVllm) -> None:
    fixture.options = {"queue_size": 0}
    fake.delay_s = 1.0
    with gateway_running(fixture, fake) as rig:
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
        first: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: first.append(post(rig, "/v1/completions", json=body))
        )
        thread.start()
        deadline = time.monotonic() + 5
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = post(rig, "/v1/completions", json=body)
        thread.join()
        assert busy.status_code == 429
        assert busy.headers["Retry-After"] == "1"
        assert first[0].status_code == 200
        assert rig.gateway.refused_busy == 1
        assert len(fake.requests) == 1


def test_concurrency_above_one_needs_a_certificate(fixture: Fixture) -> None:
    with pytest.raises(UsageError, match="--concurrency 2 is refused"):
        api.build_gateway(
            fixture.workspace.config, transcript_dir=fixture.transcripts, concurrency=2
        )


# --- security ---------------------------------------------------------------------------------


def test_a_non_loopback_bind_needs_an_api_key() -> None:
    with pytest.raises(UsageError, match="refused without an API key"):
        check_bind("0.0.0.0", None)
    with pytest.raises(UsageError):
        check_bind("example.org", None)
    check_bind("0.0.0.0", "k" * 32)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)


def test_serve_refuses_a_public_bind_before_anything_else(cli: CliRunner, fixture: Fixture) -> None:
    ran = cli(
        "serve",
        "--config",
        fixture.workspace.config,
        "--transcript-dir",
        fixture.transcripts,
        "--host",
        "0.0.0.0",
    )
    assert ran.code == 2, ran
    assert "refused without an API key" in ran.err
    assert not fixture.transcripts.exists()


def test_an_api_key_is_required_and_never_shown(fixture: Fixture, fake: StreamingFakeVllm) -> None:
    key = "sk-" + "s3cret" * 8
    fixture.options = {"api_key": key}
    with gateway_running(fixture, fake) as rig:
        assert key not in repr(rig.gateway.settings)
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
        assert post(rig, "/v1/completions", json=body).status_code == 401
        wrong = post(rig, "/v1/completions", json=body, headers={"Authorization": "Bearer no"})
        assert wrong.status_code == 401
        assert key not in wrong.text
        answer = rig.client(api_key=key).completions.create(model=MODEL, prompt="Hi", max_tokens=2)
        assert answer.choices[0].text
        assert len(fake.requests) == 1


# --- where the gateway sends requests ----------------------------------------------------------


def _gateway_over(
    fixture: Fixture,
    published: StreamingFakeVllm,
    own: StreamingFakeVllm,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Gateway, int]]:
    """A gateway whose container has an address of its own (127.0.0.1, ``own`` listening on the
    port a container's server would be on) besides the published port (``published``)."""
    with serving(published.answer) as port, serving(own.answer) as own_port:
        monkeypatch.setattr(verification, "CONTAINER_PORT", own_port)
        config = gateway_profile(fixture.workspace, port)
        spec = build_container_spec(load_profile(config))
        container = dataclasses.replace(faithful_container(spec), ip_address="127.0.0.1")
        engine = FakeEngine(container, pinned_image(spec))
        yield (
            api.build_gateway(config, transcript_dir=fixture.transcripts, engine=engine),
            own_port,
        )


def test_the_container_is_reached_at_its_own_address_when_it_answers_the_same(
    fixture: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    published, own = StreamingFakeVllm(), StreamingFakeVllm()
    for gateway, own_port in _gateway_over(fixture, published, own, monkeypatch):
        assert gateway.verified.base_url == f"http://127.0.0.1:{own_port}"
        assert gateway.verified.published_url != gateway.verified.base_url
        server = GatewayServer(gateway, "127.0.0.1", 0)
        server.start()
        try:
            answer = openai.OpenAI(
                base_url=f"{server.url}/v1", api_key="unused", max_retries=0
            ).completions.create(model=MODEL, prompt="Hello", max_tokens=4)
            assert answer.choices[0].text
            health = httpx.get(f"{server.url}/health").json()
            assert health["upstream"] == f"http://127.0.0.1:{own_port}"
        finally:
            server.stop()
        completions = [path for path, _ in own.requests if path == "/v1/completions"]
        assert completions == ["/v1/completions"]
        assert not [path for path, _ in published.requests if path == "/v1/completions"]


def test_an_own_address_serving_something_else_is_not_used(
    fixture: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    published, own = StreamingFakeVllm(), StreamingFakeVllm()
    real_answer = own.answer

    def other_version(method: str, path: str, body: Any) -> Answer:
        if path == "/version":
            return Answer(body={"version": "0.31.9"})
        return real_answer(method, path, body)

    own.answer = other_version  # type: ignore[method-assign]
    for gateway, _ in _gateway_over(fixture, published, own, monkeypatch):
        assert gateway.verified.base_url == gateway.verified.published_url


def test_an_unreachable_own_address_falls_back_to_the_published_port(
    fixture: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = StreamingFakeVllm()
    monkeypatch.setattr(verification, "CONTAINER_PORT", 1)  # nothing listens on port 1
    with serving(published.answer) as port:
        config = gateway_profile(fixture.workspace, port)
        spec = build_container_spec(load_profile(config))
        container = dataclasses.replace(faithful_container(spec), ip_address="127.0.0.1")
        gateway = api.build_gateway(
            config,
            transcript_dir=fixture.transcripts / "again",
            engine=FakeEngine(container, pinned_image(spec)),
        )
        assert gateway.verified.base_url == f"http://127.0.0.1:{port}"
