"""``detserve serve`` in front of the real tiny CPU container, driven by the official client.

One container and one gateway (a separate ``detserve serve`` process on a free loopback port)
for the module; the tests run in order and add to one transcript. The ``openai`` client gets
completions and chats, whole and streamed, and JSON-schema constrained answers (each parses and
validates against its schema; one whose properties are out of alphabetical order is written in
that order, recorded in it and replayed); every answer's provenance id resolves to the same
record; a client that leaves mid-stream leaves an ``incomplete`` line; a malformed body is a 400
and a 10 MB body a 413, and neither is recorded. Then the load: 16 client threads send 400 mixed
requests to a gateway whose queue holds 2, count the 429s and retry them after ``Retry-After``;
``/metrics``, scraped before and after, moved by exactly that (answers, 429s, transcript lines).
Last, the gateway stopped with Ctrl-C closes its transcript, which validates and holds every
answer exactly once, and ``detserve replay --claim SEGMENT`` (every exchange sent again, the
incomplete one included) writes the same bytes and reports INCOMPLETE (ok: every recorded token
repeats, but the exchange the client left holds only the start of its answer, so never
IDENTICAL).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import jsonschema
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from detserve.gateway.app import MAX_BODY_BYTES
from detserve.runlog.transcript import output_sha256, read_exchanges, validate_transcript

from .conftest import DetserveRunner, ProfileFactory, container_of
from .gateway_process import MODEL, GatewayProcess, start_gateway, throttled

pytestmark = pytest.mark.integration

PROMPTS = ("The quick brown fox", "1, 2, 3, 4, 5,", "def main():")
CHATS = (
    [{"role": "user", "content": "Say hello."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
    ],
)
#: small enough that the tiny model always finishes it within MAX_TOKENS (enums only)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "confident": {"type": "boolean"}},
    "required": ["answer", "confident"],
    "additionalProperties": False,
}
RESPONSE_FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
#: properties out of alphabetical order: the engine writes the fields in the schema's order, so
#: the schema must be sent, recorded and replayed in it (RFC 8785 would sort it)
UNSORTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"confident": {"type": "boolean"}, "answer": {"enum": ["yes", "no"]}},
    "required": ["confident", "answer"],
    "additionalProperties": False,
}
MAX_TOKENS = 32
#: a short queue, so that the load test's 16 clients really meet 429s
QUEUE_SIZE = 2
LOAD_CLIENTS, LOAD_REQUESTS, LOAD_MAX_TOKENS = 16, 400, 4
#: room for the schema's longest answer
CONSTRAINED_MAX_TOKENS = 40


@dataclass
class Served:
    gateway: GatewayProcess
    #: the name of the engine's container
    container: str
    #: every answer's provenance, in the order answered
    provenances: list[dict[str, Any]] = field(default_factory=list)
    #: how many exchanges the client left mid-stream
    left: int = 0
    #: the ids the load test was answered with
    loaded: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def served(
    profile_factory: ProfileFactory,
    detserve: DetserveRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    profile = profile_factory("gateway-real")
    started = detserve("run", "--config", profile, timeout=600)
    assert started.code == 0, started
    transcripts = tmp_path_factory.mktemp("gateway") / "transcripts"
    gateway = start_gateway(profile, transcripts, "--queue-size", str(QUEUE_SIZE))
    try:
        yield Served(gateway, container_of(profile))
    finally:
        gateway.stop()
        detserve("stop", "--config", profile)


def test_completions_whole_and_streamed(served: Served, docker_client: docker.DockerClient) -> None:
    client = served.gateway.client()
    health = served.gateway.health().json()
    assert health["status"] == "ok"
    assert health["pins"]["vllm_version"] == "0.32.0"
    # on this host the engine is reached at the container's own address, not through the
    # published port's userland proxy
    networks = docker_client.containers.get(served.container).attrs["NetworkSettings"]["Networks"]
    address = next(iter(networks.values()))["IPAddress"]
    assert health["upstream"] == f"http://{address}:8000", health
    whole: dict[str, str] = {}
    for prompt in PROMPTS:
        raw = client.completions.with_raw_response.create(model=MODEL, prompt=prompt, max_tokens=12)
        answer = raw.parse()
        whole[prompt] = answer.choices[0].text
        provenance = answer.model_extra["detserve"]
        assert raw.headers["X-Detserve-Id"] == provenance["id"]
        assert raw.headers["X-Detserve-Output-Sha256"] == provenance["output_sha256"]
        served.provenances.append(provenance)
    for prompt in PROMPTS:
        chunks = list(
            client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, stream=True)
        )
        assert len(chunks) > 1  # really streamed
        # greedy and seeded: streamed or not, the same text
        assert "".join(chunk.choices[0].text for chunk in chunks) == whole[prompt]
        served.provenances.append(chunks[-1].model_extra["detserve"])


def test_chats_whole_and_streamed(served: Served) -> None:
    client = served.gateway.client()
    for messages in CHATS:
        answer = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=MAX_TOKENS,  # type: ignore[arg-type]
        )
        text = answer.choices[0].message.content
        assert text
        served.provenances.append(answer.model_extra["detserve"])
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=MAX_TOKENS,
                stream=True,
            )
        )
        assert len(chunks) > 1
        assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == text
        assert chunks[-1].choices[0].finish_reason == answer.choices[0].finish_reason
        served.provenances.append(chunks[-1].model_extra["detserve"])


def test_a_json_schema_response_format_is_obeyed(served: Served) -> None:
    client = served.gateway.client()
    texts = []
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is a whale a fish? Reply with JSON."}],
        max_tokens=MAX_TOKENS,
        response_format=RESPONSE_FORMAT,
    )
    texts.append(answer.choices[0].message.content or "")
    served.provenances.append(answer.model_extra["detserve"])
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Is the sea deep? JSON please."}],
            max_tokens=MAX_TOKENS,
            response_format=RESPONSE_FORMAT,
            stream=True,
        )
    )
    texts.append("".join(chunk.choices[0].delta.content or "" for chunk in chunks))
    served.provenances.append(chunks[-1].model_extra["detserve"])
    completion = client.completions.create(
        model=MODEL,
        prompt="Is the sky green? Answer in JSON:",
        max_tokens=MAX_TOKENS,
        extra_body={"response_format": RESPONSE_FORMAT},
    )
    texts.append(completion.choices[0].text)
    served.provenances.append(completion.model_extra["detserve"])
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_a_schema_is_sent_recorded_and_obeyed_in_its_own_property_order(served: Served) -> None:
    client = served.gateway.client()
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": UNSORTED_SCHEMA},
    }
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is ice cold? Reply with JSON."}],
        max_tokens=CONSTRAINED_MAX_TOKENS,
        response_format=response_format,
    )
    served.provenances.append(answer.model_extra["detserve"])
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Is fire hot? Answer in JSON:",
            max_tokens=CONSTRAINED_MAX_TOKENS,
            stream=True,
            extra_body={"structured_outputs": {"json": UNSORTED_SCHEMA}},
        )
    )
    served.provenances.append(chunks[-1].model_extra["detserve"])
    streamed = "".join(chunk.choices[0].text for chunk in chunks)
    for text in (answer.choices[0].message.content or "", streamed):
        assert list(json.loads(text)) == ["confident", "answer"], text
        jsonschema.validate(json.loads(text), UNSORTED_SCHEMA)


def test_every_provenance_id_resolves_to_its_record(served: Served) -> None:
    assert len(served.provenances) == 15
    for provenance in served.provenances:
        resolved = httpx.get(f"{served.gateway.url}/v1/provenance/{provenance['id']}")
        assert resolved.status_code == 200
        assert resolved.json() == provenance
        assert provenance["complete"] is True
    missing = httpx.get(f"{served.gateway.url}/v1/provenance/{'0' * 32}")
    assert missing.status_code == 404


def test_a_client_leaving_mid_stream_leaves_an_incomplete_line(served: Served) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 400, "stream": True}
    # the engine throttled, so the stream is still being written when the client leaves
    with throttled(served.container):
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", f"{served.gateway.url}/v1/completions", json=body) as response,
        ):
            assert response.status_code == 200
            exchange_id = response.headers["X-Detserve-Id"]
            for line in response.iter_lines():
                if line.startswith("data:"):
                    break  # the first token arrived: leave
        served.left += 1
        # the line is written when the gateway notices; it then resolves, marked incomplete
        deadline = time.monotonic() + 30
        while True:
            resolved = httpx.get(f"{served.gateway.url}/v1/provenance/{exchange_id}")
            if resolved.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert resolved.status_code == 200, resolved.text
    record = resolved.json()
    assert record["incomplete"] == "client_disconnected"
    assert record["delivery"] == "partial"  # the first token went out, not the rest
    assert record["complete"] is False
    assert served.gateway.health().status_code == 200


def test_a_malformed_and_an_oversized_body_are_refused_and_not_recorded(served: Served) -> None:
    url = f"{served.gateway.url}/v1/chat/completions"
    malformed = httpx.post(
        url,
        content=b'{"model": "tiny-llama", "messages": [',
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert malformed.status_code == 400
    assert "not valid JSON" in malformed.json()["error"]["message"]
    oversized = httpx.post(
        url,
        content=b'{"model": "tiny-llama", "messages": [], "pad": "' + b"x" * (10 << 20) + b'"}',
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert oversized.status_code == 413
    assert f"limit of {MAX_BODY_BYTES} bytes" in oversized.json()["error"]["message"]
    refused = httpx.post(url, json={"model": MODEL, "messages": CHATS[0], "temperature": 0.8})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "temperature"
    assert served.gateway.health().status_code == 200


@dataclass
class LoadClient:
    """One of the load test's clients: what it asked, and the 429s it met and retried."""

    client: openai.OpenAI
    refused_busy: int = 0
    waited_s: float = 0.0

    def ask(self, number: int) -> tuple[str, str]:
        """Request ``number`` of the mix, retried after each 429 as Retry-After says; its
        provenance id and its text."""
        chat, stream, constrained = number % 2 == 1, number % 4 >= 2, number % 5 == 0
        extra: dict[str, Any] = {"response_format": RESPONSE_FORMAT} if constrained else {}
        while True:
            try:
                if chat:
                    return self._chat(number, stream, extra)
                return self._completion(number, stream, extra)
            except openai.RateLimitError as refused:
                self.refused_busy += 1
                wait = float(refused.response.headers["Retry-After"])
                self.waited_s += wait
                time.sleep(wait)

    def _completion(self, number: int, stream: bool, extra: dict[str, Any]) -> tuple[str, str]:
        prompt = f"{PROMPTS[number % len(PROMPTS)]} {number}"
        tokens = CONSTRAINED_MAX_TOKENS if extra else LOAD_MAX_TOKENS
        if stream:
            chunks = list(
                self.client.completions.create(
                    model=MODEL, prompt=prompt, max_tokens=tokens, stream=True, extra_body=extra
                )
            )
            text = "".join(chunk.choices[0].text for chunk in chunks)
            return chunks[-1].model_extra["detserve"]["id"], text
        answer = self.client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=tokens, extra_body=extra
        )
        return answer.model_extra["detserve"]["id"], answer.choices[0].text

    def _chat(self, number: int, stream: bool, extra: dict[str, Any]) -> tuple[str, str]:
        messages: Any = [{"role": "user", "content": f"Request {number}: yes or no?"}]
        tokens = CONSTRAINED_MAX_TOKENS if extra else LOAD_MAX_TOKENS
        if stream:
            chunks = list(
                self.client.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=tokens, stream=True, extra_body=extra
                )
            )
            text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
            return chunks[-1].model_extra["detserve"]["id"], text
        answer = self.client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=tokens, extra_body=extra
        )
        return answer.model_extra["detserve"]["id"], answer.choices[0].message.content or ""


def scrape(gateway: GatewayProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``/metrics``, read by the client library's own parser: value by (name, labels)."""
    response = httpx.get(f"{gateway.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_load_sixteen_clients_four_hundred_requests_429s_retried(served: Served) -> None:
    before = scrape(served.gateway)
    clients = [LoadClient(served.gateway.client()) for _ in range(LOAD_CLIENTS)]
    began = time.monotonic()
    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        answers = list(
            pool.map(
                lambda number: clients[number % LOAD_CLIENTS].ask(number), range(LOAD_REQUESTS)
            )
        )
    seconds = time.monotonic() - began
    refused_busy = sum(client.refused_busy for client in clients)
    print(
        f"load: {LOAD_REQUESTS} requests from {LOAD_CLIENTS} clients in {seconds:.1f} s "
        f"({LOAD_REQUESTS / seconds:.1f}/s), {refused_busy} answered 429 and retried "
        f"(queue size {QUEUE_SIZE})"
    )
    assert refused_busy > 0  # the queue's bound was met, so its path ran
    ids = [exchange_id for exchange_id, _ in answers]
    assert len(set(ids)) == LOAD_REQUESTS
    for number, (_, text) in enumerate(answers):
        if number % 5 == 0:  # constrained, with room enough for the enums
            jsonschema.validate(json.loads(text), SCHEMA)
    served.loaded = ids
    assert served.gateway.health().json()["status"] == "ok"
    after = scrape(served.gateway)

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after[key] - before.get(key, 0.0)

    def answers(outcome: str) -> float:
        return sum(
            moved("detserve_gateway_requests_total", route=route, outcome=outcome)
            for route in ("/v1/completions", "/v1/chat/completions")
        )

    assert answers("2xx") == LOAD_REQUESTS
    assert answers("4xx") == refused_busy  # the 429s, and nothing else refused
    assert moved("detserve_gateway_refusals_total", reason="queue_full", param="none") == (
        refused_busy
    )
    assert moved("detserve_gateway_transcript_lines_total", record="exchange") == LOAD_REQUESTS
    assert moved("detserve_gateway_transcript_fsync_seconds_count") == LOAD_REQUESTS
    assert moved("detserve_gateway_queue_wait_seconds_count") == LOAD_REQUESTS
    assert after["detserve_gateway_queue_pending", frozenset()] == 0
    assert after["detserve_gateway_queue_capacity", frozenset()] == 1 + QUEUE_SIZE
    assert after["detserve_gateway_healthy", frozenset()] == 1


def test_the_transcript_validates_and_replays_identical(
    served: Served, detserve: DetserveRunner, tmp_path: Path
) -> None:
    gateway = served.gateway
    code, out, err = gateway.stop()
    assert code == 0, (out, err)
    (segment,) = gateway.segments()
    assert str(segment) in out
    summary = validate_transcript(segment)
    assert summary.footer is not None
    assert summary.footer.reason == "stopped"
    exchanges = read_exchanges(segment)
    answered = [e for e in exchanges if e.incomplete is None]
    # in order until the load test; then each of its answers exactly once, and nothing else
    sequential = [p["id"] for p in served.provenances]
    assert [e.id for e in answered[: len(sequential)]] == sequential
    loaded = [e.id for e in answered[len(sequential) :]]
    assert len(loaded) == len(set(loaded)) == LOAD_REQUESTS
    assert set(loaded) == set(served.loaded)
    assert [e.incomplete for e in exchanges if e.incomplete] == ["client_disconnected"]
    assert {e.delivery for e in answered} == {"delivered"}
    assert {e.request.kind for e in answered} == {"completion", "chat"}
    assert sum(e.request.constraint is not None for e in answered) == 5 + LOAD_REQUESTS // 5
    # the unsorted schema was recorded in its own order, so the replay below sends it so
    recorded = [e.request.constraint for e in answered if e.request.constraint is not None]
    unsorted = [c.text for c in recorded if '"properties":{"confident"' in c.text]
    assert len(unsorted) == 2
    assert all(text.index('"confident"') < text.index('"answer"') for text in unsorted)
    assert all(e.finish_reason is not None for e in answered)
    for exchange, provenance in zip(answered[: len(sequential)], served.provenances, strict=True):
        assert (
            output_sha256(exchange.output_token_ids, exchange.text) == (provenance["output_sha256"])
        )

    replay_dir = tmp_path / "replay"
    replayed = detserve(
        "replay", "--claim", segment, "--config", gateway.profile, "--output-dir", replay_dir,
        "--json", timeout=600,
    )  # fmt: skip
    assert replayed.code == 0, replayed
    assert replayed.json()["verdict"] == "incomplete"  # the exchange the client left
    assert (replay_dir / "replay.transcript.jsonl").read_bytes() == segment.read_bytes()
    compared = detserve(
        "eval-determinism", "--run-a", segment, "--run-b", replay_dir / "replay.transcript.jsonl"
    )
    assert compared.code == 0, compared
    assert "INCOMPLETE: every recorded token repeats" in compared.out
    report = json.loads((replay_dir / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["identical"] == len(exchanges)
    assert report["incomplete_samples"] == served.left
