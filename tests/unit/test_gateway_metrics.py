"""``GET /metrics`` against a fake vLLM, on real sockets: read with ``prometheus_client``'s own
parser, behind the API key and the Host/Origin guards, labelled only from fixed sets, and moved
by exactly what a load of clients did (answers, 429s, transcript lines, queue waits).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from detserve.gateway.admission import Refused
from detserve.gateway.metrics import (
    FIELDS,
    OUTCOMES,
    ROUTE_LABELS,
    GatewayMetrics,
    GatewayState,
    param_of,
    route_of,
)
from detserve.gateway.verification import SnapshotBounds

from .gateway_rig import Fixture, GatewayRig, StreamingFakeVllm, gateway_running

MODEL = "tiny-llama"
BODY = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
JSON = {"Content-Type": "application/json"}
#: samples by (name, labels)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(rig: GatewayRig, **kwargs: Any) -> str:
    response = httpx.get(f"{rig.url}/metrics", timeout=10, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return response.text


def parsed(text: str) -> Samples:
    """Every sample, through the client library's own parser (it raises on a malformed line)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, key
            samples[key] = sample.value
    return samples


def scrape(rig: GatewayRig, **kwargs: Any) -> Samples:
    return parsed(scrape_text(rig, **kwargs))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - before.get((name, frozenset(labels.items())), 0.0)


def post(rig: GatewayRig, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{rig.url}{path}", timeout=30, **kwargs)


# --- the format -------------------------------------------------------------------------------


def test_the_exposition_parses_and_holds_every_family(rig: GatewayRig) -> None:
    assert post(rig, "/v1/completions", json=BODY).status_code == 200
    text = scrape_text(rig)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    # (each counter and histogram also has its *_created gauge, the library's default)
    kinds = {name: f.type for name, f in families.items() if not name.endswith("_created")}
    assert kinds == {
        "detserve_gateway_requests": "counter",
        "detserve_gateway_refusals": "counter",
        "detserve_gateway_queue_wait_seconds": "histogram",
        "detserve_gateway_transcript_lines": "counter",
        "detserve_gateway_transcript_fsync_seconds": "histogram",
        "detserve_gateway_queue_pending": "gauge",
        "detserve_gateway_queue_in_flight": "gauge",
        "detserve_gateway_queue_capacity": "gauge",
        "detserve_gateway_verification_age_seconds": "gauge",
        "detserve_gateway_verification_bound_seconds": "gauge",
        "detserve_gateway_verification_cpu_seconds": "counter",
        "detserve_gateway_healthy": "gauge",
        "detserve_gateway_health_state": "gauge",
    }
    samples = parsed(text)
    # every route and outcome is there from the start, at 0 until it happens
    for route in ROUTE_LABELS:
        for outcome in OUTCOMES:
            labels = frozenset({("route", route), ("outcome", outcome)})
            assert ("detserve_gateway_requests_total", labels) in samples
    assert value(samples, "detserve_gateway_requests_total", route="/v1/completions", outcome="2xx")
    assert value(samples, "detserve_gateway_transcript_lines_total", record="header") == 1
    assert value(samples, "detserve_gateway_transcript_lines_total", record="exchange") == 1
    assert value(samples, "detserve_gateway_transcript_fsync_seconds_count") == 2
    assert value(samples, "detserve_gateway_queue_wait_seconds_count") == 1
    assert value(samples, "detserve_gateway_queue_capacity") == 1 + 32
    assert value(samples, "detserve_gateway_healthy") == 1
    assert value(samples, "detserve_gateway_health_state", state="ok") == 1
    # a histogram's buckets grow to its count
    buckets = [
        value for (name, _), value in samples.items() if name.endswith("fsync_seconds_bucket")
    ]
    assert max(buckets) == 2
    assert sorted(buckets) == buckets


def test_each_gateway_counts_in_a_registry_of_its_own() -> None:
    bounds = SnapshotBounds(2.0, 640.0, 0.04, 0.0, 0.0)
    state = GatewayState(0, 0, 1, "ok", time.time(), time.time(), bounds)
    one, two = GatewayMetrics(lambda: state), GatewayMetrics(lambda: state)
    one.answered("/health", 200)
    one.line_written("exchange", 0.001)

    def requests(metrics: GatewayMetrics) -> float:
        samples = parsed(metrics.exposition().decode())
        return value(samples, "detserve_gateway_requests_total", route="/health", outcome="2xx")

    assert (requests(one), requests(two)) == (1, 0)
    global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("detserve") for name in global_names)


# --- who may read it --------------------------------------------------------------------------


def test_metrics_need_the_api_key_and_pass_the_browser_guards(
    fixture: Fixture, fake: StreamingFakeVllm
) -> None:
    key = "sk-" + "m3trics" * 8
    fixture.options = {"api_key": key}
    with gateway_running(fixture, fake) as rig:
        url = f"{rig.url}/metrics"
        bearer = {"Authorization": f"Bearer {key}"}
        for refused in (httpx.get(url), httpx.get(url, headers={"Authorization": "Bearer no"})):
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert "detserve_gateway" not in refused.text
        for foreign in ({"Host": "evil.example"}, {"Origin": "http://evil.example"}):
            answer = httpx.get(url, headers=bearer | foreign)  # the key does not lift them
            assert answer.status_code == 403
            assert "detserve_gateway" not in answer.text
        text = scrape_text(rig, headers=bearer)
        assert key not in text
        samples = parsed(text)
        assert (
            value(samples, "detserve_gateway_refusals_total", reason="unauthorized", param="none")
            == 2
        )
        assert (
            value(samples, "detserve_gateway_refusals_total", reason="host_or_origin", param="none")
            == 2
        )
        assert (
            value(samples, "detserve_gateway_requests_total", route="/metrics", outcome="4xx") == 4
        )


# --- labels: fixed sets, never the client's text ----------------------------------------------


def hostile_round(rig: GatewayRig, tag: str) -> None:
    """Requests whose every client-chosen string is new: field names, paths, ids."""
    assert post(rig, "/v1/completions", json=BODY | {f"evil_{tag}": 1}).status_code == 400
    assert post(rig, "/v1/completions", json=BODY | {f"top_p{tag}": 1}).status_code == 400
    chat = {"model": MODEL, "messages": [{"role": f"evil_{tag}", "content": "x"}]}
    assert post(rig, "/v1/chat/completions", json=chat).status_code == 400
    assert httpx.get(f"{rig.url}/evil_{tag}").status_code == 404
    assert httpx.get(f"{rig.url}/v1/provenance/evil_{tag}").status_code == 404
    assert httpx.delete(f"{rig.url}/v1/completions/evil_{tag}").status_code == 404


def series(text: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return set(parsed(text))


def test_no_client_text_becomes_a_label(rig: GatewayRig) -> None:
    hostile_round(rig, "first")
    first = series(scrape_text(rig))
    for number in range(20):
        hostile_round(rig, f"{number}_{uuid.uuid4().hex}")
    text = scrape_text(rig)
    assert "evil" not in text
    # twenty rounds of new names added no series: the labels are bounded
    assert series(text) == first
    samples = parsed(text)
    for name, labels in samples:
        found = dict(labels)
        if name == "detserve_gateway_requests_total":
            assert found["route"] in ROUTE_LABELS
            assert found["outcome"] in OUTCOMES
        if name == "detserve_gateway_refusals_total":
            assert found["param"] in FIELDS | {"body", "other", "none"}
    refusals = "detserve_gateway_refusals_total"
    assert value(samples, refusals, reason="invalid_request", param="other") == 2 * 21
    assert value(samples, refusals, reason="invalid_request", param="messages") == 21
    assert value(samples, "detserve_gateway_requests_total", route="other", outcome="4xx") == 42
    provenance = value(
        samples, "detserve_gateway_requests_total", route="/v1/provenance/{id}", outcome="4xx"
    )
    assert provenance == 21


@pytest.mark.parametrize(
    ("request_", "status", "reason", "param"),
    [
        ({"json": BODY | {"temperature": 0.7}}, 400, "invalid_request", "temperature"),
        ({"json": BODY | {"top_k": 3}}, 400, "invalid_request", "top_k"),
        (
            {"json": BODY | {"structured_outputs": {"json_object": False}}},
            400,
            "invalid_request",
            "structured_outputs",
        ),
        ({"json": BODY | {"frobnicate": True}}, 400, "invalid_request", "other"),
        (
            {"content": b'{"model": "tiny-llama", "prompt": ', "headers": JSON},
            400,
            "invalid_request",
            "body",
        ),
        (
            {"content": b'{"pad": "' + b"x" * (3 << 20) + b'"}', "headers": JSON},
            413,
            "body_too_large",
            "body",
        ),
        (
            {"content": json.dumps(BODY), "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
            "body",
        ),
    ],
)
def test_a_refused_body_is_counted_by_its_field(
    rig: GatewayRig, request_: dict[str, Any], status: int, reason: str, param: str
) -> None:
    before = scrape(rig)
    assert post(rig, "/v1/completions", **request_).status_code == status
    after = scrape(rig)
    assert moved(before, after, "detserve_gateway_refusals_total", reason=reason, param=param) == 1
    route = {"route": "/v1/completions", "outcome": "4xx"}
    assert moved(before, after, "detserve_gateway_requests_total", **route) == 1
    assert moved(before, after, "detserve_gateway_transcript_lines_total", record="exchange") == 0


def test_the_labels_of_a_path_and_a_refusal() -> None:
    assert route_of("/v1/provenance/" + "0" * 32) == "/v1/provenance/{id}"
    assert route_of("/metrics/") == route_of("/v1/models/x") == "other"
    assert param_of(Refused("messages[3].content", "m")) == "messages"
    assert param_of(Refused("max_completion_tokens", "m")) == "max_completion_tokens"
    assert param_of(Refused("role\n{evil}", "m")) == "other"
    assert param_of(Refused(None, "m")) == "body"


def test_a_client_gone_before_any_status_is_counted_none(rig: GatewayRig) -> None:
    before = scrape(rig)
    with socket.create_connection(("127.0.0.1", rig.server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{" % rig.server.port
        )
    deadline = time.monotonic() + 10
    gone = {"route": "/v1/completions", "outcome": "none"}
    while time.monotonic() < deadline:
        after = scrape(rig)
        if moved(before, after, "detserve_gateway_requests_total", **gone):
            break
        time.sleep(0.05)
    assert moved(before, after, "detserve_gateway_requests_total", **gone) == 1
    assert value(after, "detserve_gateway_queue_pending") == 0


# --- health and verification ------------------------------------------------------------------


def health_states(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["state"]: found
        for (name, labels), found in samples.items()
        if name == "detserve_gateway_health_state"
    }


def test_health_and_its_reason_are_gauges_read_when_scraped(
    rig: GatewayRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = rig.gateway.monitor
    samples = scrape(rig)
    assert value(samples, "detserve_gateway_verification_age_seconds", check="snapshot") < 60
    monitor.last_verified_at -= 1000  # read at the scrape, not kept
    samples = scrape(rig)
    assert value(samples, "detserve_gateway_verification_age_seconds", check="snapshot") >= 1000
    assert value(samples, "detserve_gateway_verification_age_seconds", check="identity") < 60

    def broken(_container_id: str) -> Any:
        raise RuntimeError("the engine's client broke")

    # a check that raises is a doubt, raised again by every tick of the watcher until one passes
    monkeypatch.setattr(rig.engine, "inspect", broken)
    monitor.recheck_identity()  # what a failed request to the engine asks for
    samples = scrape(rig)
    assert value(samples, "detserve_gateway_healthy") == 0
    assert health_states(samples)["doubted"] == 1
    monkeypatch.undo()
    monitor.watch_tick()  # every check passes: the doubt is lifted
    assert health_states(scrape(rig))["ok"] == 1

    rig.engine.restart()
    monitor.check_identity()
    assert post(rig, "/v1/completions", json=BODY).status_code == 503
    samples = scrape(rig)  # answered while unhealthy: that is when it is read
    assert value(samples, "detserve_gateway_healthy") == 0
    assert health_states(samples) == {
        "ok": 0,
        "doubted": 0,
        "container_gone": 0,
        "container_changed": 1,
        "snapshot_failed": 0,
        "watcher_stopped": 0,
        "transcript_broken": 0,
    }
    refusal = {"reason": "unavailable", "param": "none"}
    assert value(samples, "detserve_gateway_refusals_total", **refusal) == 1


def test_the_snapshot_age_restarts_only_when_the_whole_snapshot_verified(rig: GatewayRig) -> None:
    monitor = rig.gateway.monitor
    monitor.last_verified_at -= 1000
    monitor.reverify_snapshot()  # the record of the lifetime's full pass held: all of it
    age = value(scrape(rig), "detserve_gateway_verification_age_seconds", check="snapshot")
    assert age < 60
    # Where no record is kept a check reads a slice of the paced pass (here almost nothing): it
    # does not verify the whole snapshot, which was last verified whole 1000 s ago.
    monitor.snapshot.unrecorded = "on tmpfs"
    monitor.snapshot.bytes_per_s = 1
    # No time passes for the paced pass, so it reads nothing: on a loaded machine a few seconds
    # between checks were a few bytes, enough to finish the rig's tiny files and the whole pass.
    frozen = monitor.snapshot._last
    monitor.snapshot._clock = lambda: frozen
    monitor.last_verified_at -= 1000
    assert monitor.snapshot.verified_whole_at is not None
    monitor.snapshot.verified_whole_at -= 1000
    monitor.reverify_snapshot()
    assert monitor.failure is None
    age = value(scrape(rig), "detserve_gateway_verification_age_seconds", check="snapshot")
    assert age >= 1000


def test_a_stopped_watcher_is_its_state(rig: GatewayRig) -> None:
    watcher = rig.gateway.watcher
    assert watcher is not None
    watcher.get_loop().call_soon_threadsafe(watcher.cancel)
    deadline = time.monotonic() + 10
    while rig.gateway.monitor.failure is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert health_states(scrape(rig))["watcher_stopped"] == 1


def test_a_snapshot_that_fails_reverification_is_its_state(rig: GatewayRig) -> None:
    weights = rig.workspace.blob_of("model.safetensors")
    weights.write_bytes(weights.read_bytes() + b"\0")
    rig.gateway.monitor.reverify_snapshot()
    assert health_states(scrape(rig))["snapshot_failed"] == 1


def test_rotated_segments_count_their_headers_and_footers(
    fixture: Fixture, fake: StreamingFakeVllm
) -> None:
    fixture.options = {"rotate_exchanges": 2}
    with gateway_running(fixture, fake) as rig:
        for _ in range(5):
            assert post(rig, "/v1/completions", json=BODY).status_code == 200
        samples = scrape(rig)
    lines = "detserve_gateway_transcript_lines_total"
    assert value(samples, lines, record="exchange") == 5
    assert value(samples, lines, record="header") == 3  # segments 0, 1, 2
    assert value(samples, lines, record="footer") == 2  # 0 and 1 rotated
    assert value(samples, "detserve_gateway_transcript_fsync_seconds_count") == 10
    assert len(list(fixture.transcripts.iterdir())) == 3


# --- under load -------------------------------------------------------------------------------

LOAD_CLIENTS, LOAD_REQUESTS, QUEUE_SIZE = 8, 96, 2


class LoadClient:
    """One client of the load: its requests, each retried after a 429 until answered."""

    def __init__(self, rig: GatewayRig) -> None:
        self.http = httpx.Client(base_url=rig.url, timeout=30)
        self.busy = 0
        self.lock = threading.Lock()

    def ask(self, number: int) -> str:
        chat, stream = number % 2 == 1, number % 4 >= 2
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body: dict[str, Any] = {"model": MODEL, "max_tokens": 3, "stream": stream}
        if chat:
            body["messages"] = [{"role": "user", "content": f"request {number}"}]
        else:
            body["prompt"] = f"request {number}"
        while True:
            with self.http.stream("POST", path, json=body) as response:
                if response.status_code == 429:
                    with self.lock:
                        self.busy += 1
                    time.sleep(0.01)
                    continue
                assert response.status_code == 200, response.read()
                text = response.read().decode()
                assert ("[DONE]" in text) == stream
                return response.headers["X-Detserve-Id"]


def test_a_load_moves_the_metrics_by_exactly_what_happened(
    fixture: Fixture, fake: StreamingFakeVllm
) -> None:
    """The unit pattern of the real-container load test: more clients than places, 429s
    retried; every counter moves by what the clients saw, no more."""
    fixture.options = {"queue_size": QUEUE_SIZE}
    fake.delay_s = fake.event_delay_s = 0.005
    with gateway_running(fixture, fake) as rig:
        before = scrape(rig)
        clients = [LoadClient(rig) for _ in range(LOAD_CLIENTS)]
        with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
            ids = list(pool.map(lambda n: clients[n % LOAD_CLIENTS].ask(n), range(LOAD_REQUESTS)))
        for client in clients:
            client.http.close()
        after = scrape(rig)
        busy = sum(client.busy for client in clients)
        assert busy > 0  # the queue's bound was met
        assert busy == rig.gateway.refused_busy
    assert len(set(ids)) == LOAD_REQUESTS == len(fake.requests)

    def delta(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    requests = "detserve_gateway_requests_total"
    answered = delta(requests, route="/v1/completions", outcome="2xx") + delta(
        requests, route="/v1/chat/completions", outcome="2xx"
    )
    assert answered == LOAD_REQUESTS
    busy_answers = delta(requests, route="/v1/completions", outcome="4xx") + delta(
        requests, route="/v1/chat/completions", outcome="4xx"
    )
    assert busy_answers == busy
    assert delta(requests, route="/metrics", outcome="2xx") == 1  # the first scrape
    assert delta("detserve_gateway_refusals_total", reason="queue_full", param="none") == busy
    refusals = sum(
        found for (name, _), found in after.items() if name == "detserve_gateway_refusals_total"
    )
    assert refusals == busy  # and no other refusal
    lines = "detserve_gateway_transcript_lines_total"
    assert delta(lines, record="exchange") == LOAD_REQUESTS
    assert delta(lines, record="header") == delta(lines, record="footer") == 0
    assert delta("detserve_gateway_transcript_fsync_seconds_count") == LOAD_REQUESTS
    assert delta("detserve_gateway_queue_wait_seconds_count") == LOAD_REQUESTS
    assert delta("detserve_gateway_queue_wait_seconds_sum") > 0  # one at a time: they waited
    assert value(after, "detserve_gateway_queue_pending") == 0
    assert value(after, "detserve_gateway_queue_in_flight") == 0
    assert value(after, "detserve_gateway_queue_capacity") == 1 + QUEUE_SIZE
    assert value(after, "detserve_gateway_healthy") == 1


def test_how_soon_a_change_is_caught_is_reported_as_measured(rig: GatewayRig) -> None:
    monitor = rig.gateway.monitor
    monitor.reverify_snapshot()  # the watch starts: its record holds
    monitor.reverify_snapshot()
    interval = monitor.reverify_interval_s
    samples = scrape(rig)
    assert value(samples, "detserve_gateway_verification_bound_seconds", check="record") == interval
    for check in ("record", "paced_pass"):  # the rate of their sum: the watch's share of a core
        assert value(samples, "detserve_gateway_verification_cpu_seconds_total", check=check) >= 0
    health = httpx.get(f"{rig.url}/health").json()["snapshot_watch"]
    assert health["record_check_bound_s"] == interval
    assert health["paced_pass_s"] > 0
    # a check of the record that cost 1 s of CPU is spaced to its share: the bound follows
    share = monitor.snapshot.share
    share.record_cpu_s = 1.0
    spaced = value(scrape(rig), "detserve_gateway_verification_bound_seconds", check="record")
    assert spaced >= 1.0 / share.record_share > interval
    assert httpx.get(f"{rig.url}/health").json()["snapshot_watch"]["record_check_bound_s"] == spaced
