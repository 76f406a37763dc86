"""The gateway against hostile clients, on real sockets to a real uvicorn on 127.0.0.1.

Loopback is not a trust boundary for browsers: a foreign ``Host`` (DNS rebinding) or ``Origin``
(a web page) is refused before anything is read. Slow and idle clients are bounded: headers
that never finish, a connection that never speaks, headers without end, a body that stalls, and
more connections than the gateway keeps; none of them keeps ``/health`` or a client out, and a
stalled upload holds a place in the queue, never more. Every status is in OpenAI's error shape,
and nothing is ever redirected.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yarl

from detserve.errors import UsageError
from detserve.gateway.connections import ConnectionLimits
from detserve.gateway.guards import HostPolicy, checked_hosts

from .gateway_rig import Fixture, GatewayRig, StreamingFakeVllm, gateway_running

MODEL = "tiny-llama"
BODY = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
#: short deadlines, so that the slow clients are seen within a test
LIMITS = ConnectionLimits(header_timeout_s=0.5, max_header_bytes=4096, max_connections=8)


@pytest.fixture
def rig(fixture: Fixture, fake: StreamingFakeVllm) -> Iterator[GatewayRig]:
    fixture.limits = LIMITS
    with gateway_running(fixture, fake) as running:
        yield running


def connect(rig: GatewayRig, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", rig.server.port), timeout=timeout)


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def exchange_raw(rig: GatewayRig, data: bytes) -> tuple[int, dict[str, str], Any]:
    with connect(rig) as sock:
        sock.sendall(data)
        return parse(read_to_end(sock))


def parse(answer: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(status_line.split()[1]), headers, json.loads(body) if body else None


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        length = int(size, 16)
        if not length:
            break
        out, body = out + rest[:length], rest[length + 2 :]
    return out


def assert_openai_error(document: Any, status: int) -> None:
    assert set(document) == {"error"}, document
    assert set(document["error"]) == {"message", "type", "param", "code"}
    assert document["error"]["type"] == (
        "server_error" if status >= 500 else "invalid_request_error"
    )
    assert document["error"]["message"]


def health_ok(rig: GatewayRig) -> bool:
    return httpx.get(f"{rig.url}/health", timeout=5).status_code == 200


# --- browsers: Host and Origin ------------------------------------------------------------------


def post_as(rig: GatewayRig, headers: dict[str, str], body: Any = BODY) -> httpx.Response:
    return httpx.post(f"{rig.url}/v1/completions", json=body, headers=headers, timeout=10)


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example:{port}"},  # DNS rebinding: a foreign name resolving here
        {"Host": "127.0.0.1"},  # another port (80)
        {"Host": "127.0.0.1:1"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},
        {"Origin": "file://"},
    ],
)
def test_a_foreign_host_or_origin_is_refused_before_anything(
    rig: GatewayRig, headers: dict[str, str]
) -> None:
    port = rig.server.port
    headers = {name: value.replace("{port}", str(port)) for name, value in headers.items()}
    # a browser's "simple" request: text/plain needs no CORS preflight
    response = httpx.post(
        f"{rig.url}/v1/completions",
        content=json.dumps(BODY),
        headers={"Content-Type": "text/plain"} | headers,
        timeout=10,
    )
    assert response.status_code == 403, response.text
    assert_openai_error(response.json(), 403)
    assert httpx.get(f"{rig.url}/health", headers=headers).status_code == 403
    assert rig.fake.requests == []
    assert rig.gateway.transcript.closed_segments == []


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]"])
def test_the_loopback_names_of_the_bound_port_are_answered(rig: GatewayRig, name: str) -> None:
    host = f"{name}:{rig.server.port}"
    response = post_as(rig, {"Host": host, "Origin": f"http://{host}"})
    assert response.status_code == 200, response.text


def test_a_request_without_host_is_refused(rig: GatewayRig) -> None:
    status, _, document = exchange_raw(rig, b"GET /health HTTP/1.0\r\n\r\n")
    assert status == 403
    assert "Host header" in document["error"]["message"]


def test_allowed_hosts_are_answered_and_nothing_else(
    fixture: Fixture, fake: StreamingFakeVllm
) -> None:
    fixture.options = {"allowed_hosts": ["Gateway.Example", "proxy.example:443"]}
    with gateway_running(fixture, fake) as rig:
        assert post_as(rig, {"Host": "gateway.example"}).status_code == 200
        assert post_as(rig, {"Host": "proxy.example:443"}).status_code == 200
        assert post_as(rig, {"Host": "proxy.example"}).status_code == 403
        ok = post_as(rig, {"Host": "gateway.example", "Origin": "https://gateway.example"})
        assert ok.status_code == 200


def test_the_host_policy_of_each_bind() -> None:
    loopback = HostPolicy.for_bind("127.0.0.1", 8088)
    assert loopback.hosts == {"127.0.0.1:8088", "localhost:8088", "[::1]:8088"}
    assert HostPolicy.for_bind("::1", 80).hosts == {
        "127.0.0.1:80", "localhost:80", "[::1]:80", "127.0.0.1", "localhost", "[::1]",
    }  # fmt: skip
    assert HostPolicy.for_bind("10.0.0.5", 8088).hosts == {"10.0.0.5:8088"}
    # a wildcard bind (it needs an API key) answers any Host unless told, and no web page
    anywhere = HostPolicy.for_bind("0.0.0.0", 8088)
    assert anywhere.host_refusal("whatever:1") is None
    assert anywhere.origin_refusal("http://whatever:1") is not None
    named = HostPolicy.for_bind("0.0.0.0", 8088, ["gw.example"])
    assert named.host_refusal("other.example") is not None
    with pytest.raises(UsageError, match="is not a host name"):
        checked_hosts(["evil\r\nX-Injected: 1"])
    with pytest.raises(UsageError):
        checked_hosts(["http://gw.example"])
    assert checked_hosts(["GW.example:8443", "[::1]:80"]) == ("gw.example:8443", "[::1]:80")


# --- every status in OpenAI's shape, no redirect ----------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/health/", 404),  # no 307 to /health
        ("POST", "/v1/completions/", 404),
        ("GET", "/v1/completions", 405),
        ("DELETE", "/health", 405),
        ("GET", "/v1/provenance/" + "0" * 32, 404),
    ],
)
def test_routing_refusals_are_openai_errors_never_redirects(
    rig: GatewayRig, method: str, path: str, status: int
) -> None:
    response = httpx.request(method, f"{rig.url}{path}", timeout=10, follow_redirects=False)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert_openai_error(response.json(), status)
    if status == 405:
        assert "allow" in response.headers


def test_a_request_uvicorn_cannot_parse_is_an_openai_400(rig: GatewayRig) -> None:
    status, _, document = exchange_raw(
        rig, b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"
    )
    assert status == 400
    assert_openai_error(document, 400)


def test_an_engine_that_is_gone_is_an_openai_502(rig: GatewayRig) -> None:
    # the engine's address, as if it had gone (nothing listens on port 1)
    rig.gateway.relay._session._base_url = yarl.URL("http://127.0.0.1:1")  # type: ignore[union-attr]
    response = post_as(rig, {})
    assert response.status_code == 502
    assert_openai_error(response.json(), 502)


# --- slow and idle connections ------------------------------------------------------------------


def test_half_sent_headers_are_answered_408_at_the_deadline(rig: GatewayRig) -> None:
    with connect(rig) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        status, headers, document = parse(read_to_end(sock))
    assert status == 408
    assert headers["connection"] == "close"
    assert_openai_error(document, 408)
    assert time.monotonic() - started < 5


def test_headers_trickled_a_byte_at_a_time_still_meet_the_deadline(rig: GatewayRig) -> None:
    """uvicorn's keep-alive timer starts again with every byte: a slowloris never met it."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    with connect(rig) as sock:
        sock.settimeout(0.1)
        started = time.monotonic()
        answer = b""
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if answer:
                break
        assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_connection_that_never_speaks_is_closed(rig: GatewayRig) -> None:
    with connect(rig) as sock:
        started = time.monotonic()
        assert read_to_end(sock) == b""  # closed, nothing said: nobody waits for an answer
        assert time.monotonic() - started < 5


def test_an_idle_keep_alive_connection_meets_the_deadline_too(rig: GatewayRig) -> None:
    with connect(rig) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % rig.server.port)
        time.sleep(0.2)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /hea")  # then nothing more
        assert read_to_end(sock).startswith(b"HTTP/1.1 408")


def test_headers_without_end_are_refused_431(rig: GatewayRig) -> None:
    with connect(rig) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        refused = False
        try:
            for _ in range(10_000):
                sock.sendall(b"X-Pad: " + b"p" * 1000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            refused = True
        assert refused
        answer = read_to_end(sock)
    if answer:  # a reset may have taken the answer with it
        assert answer.startswith(b"HTTP/1.1 431")


def test_more_connections_than_the_cap_close_the_longest_idle_and_health_answers(
    rig: GatewayRig,
) -> None:
    idle = [connect(rig) for _ in range(LIMITS.max_connections)]
    for sock in idle[::2]:
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # half-sent
    more = [connect(rig) for _ in range(12)]
    try:
        for _ in range(5):
            assert health_ok(rig)
        # the first connections, the longest waiting, made room
        idle[0].settimeout(2)
        assert read_to_end(idle[0]) in (b"",) or not read_to_end(idle[0])
    finally:
        for sock in idle + more:
            sock.close()


def test_when_every_connection_is_busy_a_new_one_is_told_503(
    fixture: Fixture, fake: StreamingFakeVllm
) -> None:
    fixture.limits = dataclasses.replace(LIMITS, max_connections=2, header_timeout_s=10)
    fixture.options = {"queue_size": 4}
    fake.delay_s = 2.0
    with gateway_running(fixture, fake) as rig:
        busy = [threading.Thread(target=post_as, args=(rig, {})) for _ in range(2)]
        for thread in busy:
            thread.start()
        deadline = time.monotonic() + 5
        while rig.gateway.slots.pending < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        status, _, document = exchange_raw(rig, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        for thread in busy:
            thread.join()
    assert status == 503
    assert "too many connections" in document["error"]["message"]


def test_health_answers_among_two_hundred_idle_and_half_sent_connections(
    fixture: Fixture, fake: StreamingFakeVllm
) -> None:
    """The functional bound; its time is measured by benchmarks/bench_gateway_hostile.py."""
    with gateway_running(fixture, fake) as rig:  # the default limits
        hostile = [connect(rig) for _ in range(200)]
        try:
            for number, sock in enumerate(hostile):
                if number % 2:
                    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
            for _ in range(20):
                assert health_ok(rig)
            answer = rig.client().completions.create(model=MODEL, prompt="Hi", max_tokens=2)
            assert answer.choices[0].text
        finally:
            for sock in hostile:
                sock.close()


# --- bodies: a deadline, and a place in the queue while read -----------------------------------


def stalled_upload(rig: GatewayRig) -> socket.socket:
    sock = connect(rig)
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model"' % rig.server.port
    )
    return sock


def test_a_stalled_upload_is_answered_408(rig: GatewayRig) -> None:
    rig.gateway.settings = dataclasses.replace(rig.gateway.settings, body_timeout_s=0.5)
    with stalled_upload(rig) as sock:
        status, headers, document = parse(read_to_end(sock))
    assert status == 408
    assert headers["connection"] == "close"
    assert_openai_error(document, 408)
    assert rig.gateway.slots.pending == 0
    assert rig.fake.requests == []


def test_stalled_uploads_hold_places_and_never_more_than_the_queue(
    fixture: Fixture, fake: StreamingFakeVllm
) -> None:
    fixture.options = {"queue_size": 1}  # two places: one slot and one to wait in
    with gateway_running(fixture, fake) as rig:
        stalled = [stalled_upload(rig) for _ in range(2)]
        try:
            deadline = time.monotonic() + 5
            while rig.gateway.slots.pending < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            busy = post_as(rig, {})
            assert busy.status_code == 429, busy.text
            assert_openai_error(busy.json(), 429)
            assert health_ok(rig)
        finally:
            for sock in stalled:
                sock.close()
        deadline = time.monotonic() + 5
        while rig.gateway.slots.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rig.gateway.slots.pending == 0  # the places came back with the clients gone
        assert post_as(rig, {}).status_code == 200


def test_a_websocket_upgrade_is_an_ordinary_request(rig: GatewayRig) -> None:
    """No route speaks WebSocket: uvicorn's WebSocket protocol is not offered at all (not even
    once a WebSocket library is installed, as none is here)."""
    assert rig.server.server.config.ws == "none"
    status, _, document = exchange_raw(
        rig,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n\r\n"
        % rig.server.port,
    )
    assert status == 200
    assert document["status"] == "ok"
