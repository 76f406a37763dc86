"""The gateway under faults of its own: nothing wedges it, nothing leaves health saying ok when
the state is not known, and the transcript says what happened.

A request that fails anywhere, streamed or not, gives its place and slot back; an unexpected
exception is an OpenAI-shaped 500 and health 503 until the next identity check; the health
watcher survives a failing check. The transcript records whether each answer was delivered, a
stream the gateway stopped as stopped (not as a client that left), a rotation that fails on a
full disk without failing the answer it recorded, and keeps its files to their owner.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import shutil
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import detserve.constraint_check as constraint_check
from detserve import api
from detserve.errors import RunLogError, UnsafeOutputError
from detserve.gateway import relay as relay_module
from detserve.gateway.relay import Relay
from detserve.runlog import transcript as transcript_module
from detserve.runlog.series import validate_transcript_dir
from detserve.runlog.transcript import read_exchanges, validate_transcript

from .committed import CliRunner
from .gateway_rig import Fixture, GatewayRig, StreamingFakeVllm, gateway_profile, gateway_running

MODEL = "tiny-llama"
BODY = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}


@pytest.fixture
def rig(fixture: Fixture, fake: StreamingFakeVllm) -> Iterator[GatewayRig]:
    fixture.options = {"queue_size": 0, "identity_interval_s": 0.2}
    with gateway_running(fixture, fake) as running:
        yield running


def post(rig: GatewayRig, body: Any = BODY, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{rig.url}/v1/completions", json=body, timeout=30, **kwargs)


def health(rig: GatewayRig) -> httpx.Response:
    return httpx.get(f"{rig.url}/health", timeout=5)


def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def only_segment(rig: GatewayRig) -> Path:
    (path,) = sorted(rig.transcripts.iterdir())
    return path


# --- every path gives its place and slot back ---------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_a_request_failing_in_the_gateway_wedges_nothing(
    rig: GatewayRig, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """A streamed request that failed before its slot was released wedged every later request
    (a hang, then 429) while /health said 200."""

    def fail(*_: object, **__: object) -> str:
        raise OverflowError("an unexpected fault on the way to the client")

    # in the stream, after the engine answered; in a whole answer, where it is recorded
    monkeypatch.setattr(relay_module, "timed", fail)
    monkeypatch.setattr(Relay, "_record", fail)
    failed = post(rig, BODY | {"stream": stream})
    assert failed.status_code == 500, failed.text
    assert failed.json()["error"]["type"] == "server_error"
    assert "OverflowError" in failed.json()["error"]["message"]
    assert rig.gateway.slots.pending == rig.gateway.slots.in_flight == 0
    monkeypatch.undo()
    eventually(lambda: health(rig).status_code == 200)
    for _ in range(3):  # one slot, no queue: each would be refused if the slot was kept
        assert post(rig, BODY | {"stream": stream}).status_code == 200


def test_a_client_gone_while_its_body_is_read_gives_its_place_back(rig: GatewayRig) -> None:
    with socket.create_connection(("127.0.0.1", rig.server.port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{" % rig.server.port
        )
        eventually(lambda: rig.gateway.slots.pending == 1)
    eventually(lambda: rig.gateway.slots.pending == 0)
    assert post(rig).status_code == 200


# --- the unexpected: a 500, and health 503 until the state is known again -----------------------


def test_an_unexpected_error_is_a_500_and_health_503_until_the_next_identity_check(
    rig: GatewayRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = rig.gateway.monitor
    real_check = monitor.check_identity
    checking = threading.Event()  # no identity check passes until the test says so

    def held_check() -> None:
        assert checking.wait(30)
        real_check()

    async def broken(*_: object) -> Any:
        raise KeyError("a bug")

    answer = Relay.answer
    monkeypatch.setattr(monitor, "check_identity", held_check)
    monkeypatch.setattr(Relay, "answer", broken)
    failed = post(rig)
    assert failed.status_code == 500
    assert set(failed.json()["error"]) == {"message", "type", "param", "code"}
    unhealthy = health(rig)
    assert unhealthy.status_code == 503
    assert "unexpected error answering a request (KeyError)" in unhealthy.json()["reason"]
    refused = post(rig)
    assert refused.status_code == 503
    assert "does not answer" in refused.json()["error"]["message"]
    monkeypatch.setattr(Relay, "answer", answer)
    checking.set()
    eventually(lambda: health(rig).status_code == 200)
    assert post(rig).status_code == 200


def test_the_health_watcher_survives_a_failing_check(
    rig: GatewayRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*_: object, **__: object) -> None:
        raise RuntimeError("a check that fails unexpectedly")

    monkeypatch.setattr(rig.gateway.monitor, "tick", failing)
    eventually(lambda: health(rig).status_code == 503)
    assert "health check failed unexpectedly (RuntimeError)" in health(rig).json()["reason"]
    assert post(rig).status_code == 503
    monkeypatch.undo()
    eventually(lambda: health(rig).status_code == 200)  # the watcher went on
    assert rig.gateway.watcher is not None
    assert not rig.gateway.watcher.done()


def test_an_engine_failure_s_identity_check_cannot_fail_unobserved(
    rig: GatewayRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It runs in an executor nobody awaits: an exception there would vanish."""

    def broken(_container_id: str) -> Any:
        raise ConnectionError("the Docker SDK, unconverted")

    monkeypatch.setattr(rig.engine, "inspect", broken)
    rig.gateway.monitor.recheck_identity()  # what the relay's engine trouble runs
    assert health(rig).status_code == 503
    assert "identity check failed unexpectedly (ConnectionError)" in health(rig).json()["reason"]
    monkeypatch.undo()
    eventually(lambda: health(rig).status_code == 200)


def test_a_watcher_that_ends_turns_health_503(rig: GatewayRig) -> None:
    watcher = rig.gateway.watcher
    assert watcher is not None
    watcher.get_loop().call_soon_threadsafe(watcher.cancel)
    eventually(lambda: health(rig).status_code == 503)
    assert "the health watcher stopped" in health(rig).json()["reason"]


# --- what the transcript says was delivered -----------------------------------------------------


@pytest.mark.parametrize("how", ["directory-removed", "segment-replaced"])
def test_a_transcript_removed_under_the_gateway_is_health_503_and_nothing_answered(
    rig: GatewayRig, how: str
) -> None:
    # the open segment would take every line into a file nobody reads, answers 200 and health ok
    body = {"model": "tiny-llama", "prompt": "p", "max_tokens": 2}
    assert httpx.post(f"{rig.url}/v1/completions", json=body, timeout=10).status_code == 200
    segment = rig.gateway.transcript.path
    if how == "directory-removed":
        shutil.rmtree(rig.transcripts)
    else:
        copy = segment.with_name("copy")
        copy.write_bytes(segment.read_bytes())
        copy.replace(segment)
    health = httpx.get(f"{rig.url}/health", timeout=10)
    assert health.status_code == 503, health.text
    assert str(segment.name) in health.json()["reason"]
    refused = httpx.post(f"{rig.url}/v1/completions", json=body, timeout=10)
    assert refused.status_code == 503, refused.text
    assert len(rig.fake.requests) == 1


def test_a_segment_removed_while_its_answer_is_recorded_is_never_answered(
    rig: GatewayRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # removed after the request was admitted (health looked fine), before its line was synced
    body = {"model": "tiny-llama", "prompt": "p", "max_tokens": 2}
    segment = rig.gateway.transcript.path
    real = transcript_module._write

    def removing(fd: int, data: bytes) -> int:
        if b'"record":"exchange"' in data:
            segment.unlink()
        return real(fd, data)

    monkeypatch.setattr(transcript_module, "_write", removing)
    response = httpx.post(f"{rig.url}/v1/completions", json=body, timeout=10)
    assert response.status_code == 500, response.text
    assert "t23" not in response.text  # the engine's answer is not given
    assert httpx.get(f"{rig.url}/health", timeout=10).status_code == 503


def test_an_answer_to_a_client_gone_before_it_is_recorded_undelivered(
    rig: GatewayRig, fake: StreamingFakeVllm
) -> None:
    fake.delay_s = 1.0
    with socket.create_connection(("127.0.0.1", rig.server.port)) as sock:
        body = json.dumps(BODY).encode()
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (rig.server.port, len(body), body)
        )
        eventually(lambda: len(fake.requests) == 1)
    fake.delay_s = 0.0
    eventually(lambda: rig.gateway.slots.pending == 0)
    assert post(rig).status_code == 200  # the slot came back once the engine answered
    rig.stop()
    gone, answered = read_exchanges(only_segment(rig))
    assert (gone.delivery, gone.incomplete) == ("undelivered", None)
    assert gone.finish_reason == "length"  # the engine's whole answer, which nobody received
    assert answered.delivery == "delivered"


def test_a_stream_the_gateway_stops_is_recorded_stopped_not_left(
    rig: GatewayRig, fake: StreamingFakeVllm
) -> None:
    fake.event_delay_s = 0.2
    rig.server.server.config.timeout_graceful_shutdown = 1
    received: list[str] = []

    def read() -> None:
        body = BODY | {"max_tokens": 50, "stream": True}
        with httpx.stream("POST", f"{rig.url}/v1/completions", json=body, timeout=30) as response:
            try:
                for line in response.iter_lines():
                    received.append(line)
            except httpx.HTTPError:
                pass  # the connection closes under it

    reader = threading.Thread(target=read)
    reader.start()
    eventually(lambda: len(received) >= 2)
    rig.stop()
    reader.join()
    (stopped,) = read_exchanges(only_segment(rig))
    assert stopped.incomplete == "gateway_stopped"
    assert stopped.delivery == "partial"
    assert 1 <= len(stopped.output_token_ids) < 50


def test_a_client_leaving_mid_stream_is_recorded_left_with_what_it_was_sent(
    rig: GatewayRig, fake: StreamingFakeVllm
) -> None:
    fake.event_delay_s = 0.1
    body = BODY | {"max_tokens": 20, "stream": True}
    with httpx.stream("POST", f"{rig.url}/v1/completions", json=body) as response:
        next(line for line in response.iter_lines() if line.startswith("data:"))
        exchange_id = response.headers["X-Detserve-Id"]
    eventually(lambda: rig.gateway.transcript.provenance(exchange_id) is not None)
    provenance = rig.gateway.transcript.provenance(exchange_id)
    assert provenance is not None
    assert (provenance.incomplete, provenance.delivery) == ("client_disconnected", "partial")


#: Python's re backtracks for ever on a run of "a" not followed by "c": a check that takes its limit
BACKTRACKING = {"type": "string", "pattern": "^(a|aa)*c$"}


def slow_constrained_stream(
    rig: GatewayRig, fake: StreamingFakeVllm, monkeypatch: pytest.MonkeyPatch
) -> tuple[socket.socket, str]:
    """A constrained stream whose output's check runs its whole limit (3 s): its socket, once
    the check is under way (its chunks wait for it), and its exchange id."""
    constraint_check.compile_problem("regex", "a")  # the child is up: the limit times the work
    monkeypatch.setattr(constraint_check, "CHECK_TIMEOUT_S", 3.0)
    fake.pieces = ['"', "a" * 60, 'cX"']
    body = BODY | {"max_tokens": 3, "stream": True, "structured_outputs": {"json": BACKTRACKING}}
    sent = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", rig.server.port))
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (rig.server.port, len(sent), sent)
    )
    head = sock.recv(65536)  # the stream's start: its chunks wait for the check
    found = re.search(rb"x-detserve-id: ([0-9a-f]{32})", head)
    assert found is not None, head
    eventually(lambda: constraint_check._lock.locked() and bool(fake.requests))
    return sock, found.group(1).decode()


def test_a_client_leaving_while_its_stream_is_checked_is_recorded_undelivered(
    rig: GatewayRig, fake: StreamingFakeVllm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check is awaited to its end although the client's leaving cancels the stream: the
    engine's whole answer is recorded, as nobody received it."""
    sock, exchange_id = slow_constrained_stream(rig, fake, monkeypatch)
    sock.close()  # the client leaves while the output is checked
    eventually(lambda: rig.gateway.transcript.provenance(exchange_id) is not None)
    provenance = rig.gateway.transcript.provenance(exchange_id)
    assert provenance is not None
    assert (provenance.incomplete, provenance.delivery) == (None, "undelivered")
    assert provenance.constraint_check == "not_checked"
    eventually(lambda: rig.gateway.slots.pending == 0)
    assert post(rig).status_code == 200


def test_a_gateway_stopped_while_a_stream_is_checked_records_it_first(
    rig: GatewayRig, fake: StreamingFakeVllm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The footer waits for the record under way; the line says nothing was delivered."""
    rig.server.server.config.timeout_graceful_shutdown = 0.2
    sock, exchange_id = slow_constrained_stream(rig, fake, monkeypatch)
    with sock:
        rig.stop()
    (checked,) = read_exchanges(only_segment(rig))
    assert checked.id == exchange_id
    assert (checked.incomplete, checked.delivery) == (None, "undelivered")
    assert checked.constraint_check == "not_checked"


def test_a_gateway_stopped_while_a_whole_answer_is_checked_records_it_undelivered(
    rig: GatewayRig, fake: StreamingFakeVllm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a stream: the check is finished and recorded before the footer, and the line says
    the answer was not delivered, since the stopped request never sends it (it said
    ``delivered``: the client was still connected when the line was made)."""
    rig.server.server.config.timeout_graceful_shutdown = 0.2
    constraint_check.compile_problem("regex", "a")  # the child is up: the limit times the work
    monkeypatch.setattr(constraint_check, "CHECK_TIMEOUT_S", 3.0)
    fake.pieces = ['"', "a" * 60, 'cX"']
    body = BODY | {"max_tokens": 3, "structured_outputs": {"json": BACKTRACKING}}
    sent = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", rig.server.port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (rig.server.port, len(sent), sent)
        )
        eventually(lambda: constraint_check._lock.locked() and bool(fake.requests))
        rig.stop()
        sock.settimeout(10)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
    assert b"aaaa" not in received  # the answer was never sent
    # told so, in OpenAI's shape: a 503, not a 500 that names an exception
    assert received.startswith(b"HTTP/1.1 503"), received[:200]
    assert b"the gateway is stopping: this request was not answered" in received
    (checked,) = read_exchanges(only_segment(rig))
    assert (checked.incomplete, checked.delivery) == (None, "undelivered")
    assert checked.constraint_check == "not_checked"


# --- rotation on a full disk, empty segments, permissions ---------------------------------------


@pytest.mark.parametrize("fails", ["footer", "next header"])
def test_a_rotation_failing_on_a_full_disk_gives_the_recorded_answer_then_503(
    fixture: Fixture, fake: StreamingFakeVllm, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    fixture.options = {"rotate_exchanges": 1}
    real_write = transcript_module._write
    marker = b'{"exchanges_sha256"' if fails == "footer" else b'{"format"'

    def full_at_rotation(fd: int, data: bytes) -> int:
        if data.startswith(marker):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    with gateway_running(fixture, fake) as rig:
        monkeypatch.setattr(transcript_module, "_write", full_at_rotation)
        answered = post(rig)
        assert answered.status_code == 200, answered.text  # it is on disk: it is given
        exchange_id = answered.json()["detserve"]["id"]
        unhealthy = health(rig)
        assert unhealthy.status_code == 503
        assert "could not be rotated" in unhealthy.json()["reason"]
        assert post(rig).status_code == 503
        monkeypatch.undo()
    # one segment, cut after the answered exchange; no empty one left behind
    (segment,) = fixture.transcripts.iterdir()
    summary = validate_transcript(segment, allow_cut=True)
    assert (summary.cut, summary.n_exchanges) == (True, 1)
    assert read_exchanges(segment, allow_cut=True)[0].id == exchange_id
    # and the next start indexes it
    with gateway_running(fixture, fake) as again:
        resolved = httpx.get(f"{again.url}/v1/provenance/{exchange_id}")
        assert resolved.status_code == 200


def test_an_empty_segment_is_skipped_at_start_and_refused_elsewhere(
    fixture: Fixture, fake: StreamingFakeVllm, cli: CliRunner
) -> None:
    fixture.transcripts.mkdir(mode=0o700)
    empty = fixture.transcripts / ("e" * 32 + ".000001.transcript.jsonl")
    empty.touch()
    with gateway_running(fixture, fake) as rig:
        assert rig.gateway.transcript.earlier.ignored == (empty,)
        assert post(rig).status_code == 200
    ran = cli("runlog", "validate", fixture.transcripts)
    assert ran.code == 2, ran
    assert "empty file" in ran.err
    with pytest.raises(RunLogError, match="empty file"):
        validate_transcript_dir(fixture.transcripts)


def test_transcripts_are_the_owners_alone(rig: GatewayRig) -> None:
    assert post(rig).status_code == 200
    assert stat.S_IMODE(rig.transcripts.stat().st_mode) == 0o700
    assert stat.S_IMODE(only_segment(rig).stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701])
def test_a_transcript_directory_others_may_enter_is_refused(
    fixture: Fixture, mode: int, cli: CliRunner
) -> None:
    fixture.transcripts.mkdir()
    fixture.transcripts.chmod(mode)
    config = gateway_profile(fixture.workspace, 9)  # refused before any engine is asked
    with pytest.raises(UnsafeOutputError, match=f"open to others \\(mode {mode:04o}\\)"):
        api.build_gateway(config, transcript_dir=fixture.transcripts)
    ran = cli("serve", "--config", config, "--transcript-dir", fixture.transcripts)
    assert ran.code == 2, ran
    assert f"chmod 700 {fixture.transcripts}" in ran.err
    assert list(fixture.transcripts.iterdir()) == []


def test_a_client_that_stops_reading_a_stream_is_dropped_and_frees_its_slot(
    rig: GatewayRig, fake: StreamingFakeVllm
) -> None:
    """A client that reads nothing holds the engine's one slot for as long as it likes, unless
    a write that waits too long drops it."""
    rig.gateway.relay.send_timeout_s = 0.5
    fake.pieces = ["x" * 65536] * 48  # 3 MiB: more than the sockets between hold
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", rig.server.port))
        body = json.dumps(BODY | {"max_tokens": 48, "stream": True}).encode()
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (rig.server.port, len(body), body)
        )
        sock.recv(1024)  # the answer starts; then the client reads nothing more
        eventually(lambda: rig.gateway.slots.in_flight == 0)
    fake.pieces = None
    assert post(rig).status_code == 200
    assert health(rig).status_code == 200  # a client's doing, not the gateway's state
    rig.stop()
    stalled, _ = read_exchanges(only_segment(rig))
    assert (stalled.incomplete, stalled.delivery) == ("client_stalled", "partial")
