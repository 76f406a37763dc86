"""Does the gateway's /health still answer quickly while hostile clients hold connections?
p50, p99 and max /health latency, first alone, then with idle and half-sent connections held
(and any hostile requests of yours in flight), in one run.

    .venv/bin/python benchmarks/bench_gateway_hostile.py                # 100 idle + 100 half-sent
    .venv/bin/python benchmarks/bench.py gateway-hostile --probes 100   # the same, fewer probes
    .venv/bin/python benchmarks/bench_gateway_hostile.py --request grammar.json --request regex.json

On the tiny CPU container under a profile of its own (configs/tiny-cpu.local.json copied with
the name ``bench-gateway-hostile`` and port 18032): ``detserve run``, then ``detserve serve`` (a
separate process, its transcript in a temporary folder under benchmarks/results) in front of it.
First ``--probes`` GET /health, each on a fresh connection, ``--interval`` seconds apart: the
baseline. Then ``--idle`` connections that never send a byte and ``--half-sent`` connections that
send the start of a request and then a byte a second (a slowloris) are opened and held: each one
the gateway closes (its header deadline, or the connection cap) is opened again at once. Each
``--request FILE`` (a JSON body with a ``path``: ``{"path": "/v1/chat/completions", "body":
{...}}``) is sent again and again, one at a time each, from its own thread, for as long as the
probes run: a hostile grammar or a catastrophic regex, say. Then the same probes again.

A probe's latency is its wall time at the client, connection included. Target: the max under
hostile load at most ``--target-ms`` (100) ms. Exit 0 met, 1 missed, 2 could not run. The
container is removed at the end; the record goes to
``benchmarks/results/bench_gateway_hostile-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench_gateway import percentile, start_gateway, stop_gateway
from bench_runtime import BASE_PROFILE, lock_base_profile, port_is_free, write_bench_profile
from benchlib import (
    RESULTS,
    BenchError,
    Benchmark,
    Outcome,
    Target,
    add_detserve_option,
    load_average,
    machine_facts,
    say,
    utc_stamp,
    write_result,
)
from detserve import api
from detserve.errors import DetserveError

#: what a half-sent connection sends first, then one more byte a second
HALF_SENT = (
    b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--idle", type=int, default=100, help="idle connections held (100)")
    parser.add_argument("--half-sent", type=int, default=100, help="half-sent requests held (100)")
    parser.add_argument("--probes", type=int, default=200, help="/health probes per phase (200)")
    parser.add_argument(
        "--interval", type=float, default=0.05, help="seconds between probes (0.05)"
    )
    parser.add_argument(
        "--request",
        type=Path,
        action="append",
        default=[],
        help="a hostile request in flight meanwhile: a JSON file {path, body} (repeatable)",
    )
    parser.add_argument(
        "--target-ms", type=float, default=100.0, help="max /health latency target (100)"
    )
    parser.add_argument(
        "--name", default="bench-gateway-hostile", help="profile name (bench-gateway-hostile)"
    )
    parser.add_argument("--port", type=int, default=18032, help="server host port (18032)")
    parser.add_argument("--gateway-port", type=int, default=18033, help="gateway port (18033)")
    parser.add_argument("--keep", action="store_true", help="leave the container running")
    add_detserve_option(parser)


class HostileConnections:
    """Idle and half-sent connections to ``port``, held open (reopened when closed) in a
    thread until :meth:`stop`."""

    def __init__(self, port: int, idle: int, half_sent: int) -> None:
        self.port = port
        self.wanted = {"idle": idle, "half-sent": half_sent}
        self.reopened = 0
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, name="hostile", daemon=True)

    def _open(self, kind: str) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        if kind == "half-sent":
            sock.send(HALF_SENT)
        self._selector.register(sock, selectors.EVENT_READ, kind)

    def start(self) -> None:
        for kind, count in self.wanted.items():
            for _ in range(count):
                self._open(kind)
        self._thread.start()

    def _hold(self) -> None:
        next_byte = time.monotonic() + 1
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    closed = not sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    closed = True
                if closed:  # the gateway closed it (or answered it 408): open another
                    self._selector.unregister(sock)
                    sock.close()
                    self.reopened += 1
                    self._open(key.data)
            if time.monotonic() >= next_byte:
                next_byte += 1
                for key in list(self._selector.get_map().values()):
                    if key.data == "half-sent":
                        with contextlib.suppress(OSError):  # seen closed by the next select
                            key.fileobj.send(b"X")  # type: ignore[union-attr]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()


class HostileRequests:
    """Each request file sent again and again from its own thread, until :meth:`stop`."""

    def __init__(self, base_url: str, files: list[Path]) -> None:
        self.requests = []
        for path in files:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict) or {"path", "body"} - document.keys():
                raise BenchError(f"{path}: expected a JSON object with a path and a body")
            self.requests.append((str(document["path"]), document["body"]))
        self.base_url = base_url
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, args=(path, body), daemon=True)
            for path, body in self.requests
        ]

    def _send(self, path: str, body: Any) -> None:
        with httpx.Client(base_url=self.base_url, trust_env=False, timeout=600) as client:
            while not self._stop.is_set():
                try:
                    status = client.post(path, json=body).status_code
                except httpx.HTTPError:
                    status = 0
                self.statuses[status] = self.statuses.get(status, 0) + 1

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=0)


def probe(port: int, count: int, interval: float) -> list[float]:
    """``count`` GET /health, each on a fresh connection; their wall times in seconds (a raw
    socket: an HTTP client's own set-up, such as httpx's TLS context, is not the gateway's)."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % port
    latencies = []
    for _ in range(count):
        began = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        latencies.append(time.perf_counter() - began)
        if not answer.startswith(b"HTTP/1.1 200"):
            raise BenchError(f"/health answered: {answer[:300]!r}")
        time.sleep(interval)
    return latencies


def stats(latencies: list[float]) -> dict[str, float]:
    return {
        "probes": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
        "max_ms": round(max(latencies) * 1e3, 3),
    }


def run(args: argparse.Namespace) -> Outcome:
    if not BASE_PROFILE.is_file():
        lock_base_profile(args.detserve)
    for port in (args.port, args.gateway_port):
        if not port_is_free("127.0.0.1", port):
            raise BenchError(f"port {port} is taken; pass --port / --gateway-port")
    stamp = utc_stamp()
    RESULTS.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.gateway_port}"
    with tempfile.TemporaryDirectory(prefix="bench-gateway-hostile-", dir=RESULTS) as temp:
        folder = Path(temp)
        profile = write_bench_profile(BASE_PROFILE, args.name, args.port, folder)
        gateway = None
        try:
            say(f"starting {args.name} on port {args.port}")
            api.run(profile, on_stage=say)
            gateway = start_gateway(args.detserve, profile, args.gateway_port, folder / "t")
            say(f"gateway on port {args.gateway_port}: {args.probes} probes alone")
            alone = probe(args.gateway_port, args.probes, args.interval)
            hostile = HostileConnections(args.gateway_port, args.idle, args.half_sent)
            requests = HostileRequests(url, args.request)
            hostile.start()
            requests.start()
            try:
                say(
                    f"{args.idle} idle and {args.half_sent} half-sent connections held, "
                    f"{len(args.request)} hostile requests in flight: {args.probes} probes"
                )
                loaded = probe(args.gateway_port, args.probes, args.interval)
            finally:
                requests.stop()
                hostile.stop()
        except DetserveError as exc:
            raise BenchError(exc.diagnostics()) from exc
        finally:
            if gateway is not None:
                stop_gateway(gateway)
            if not args.keep:
                api.stop(profile)
    phases = {"alone": stats(alone), "hostile": stats(loaded)}
    record: dict[str, Any] = {
        "benchmark": "bench_gateway_hostile",
        "stamp": stamp,
        "machine": machine_facts(),
        "load_average_after": load_average(),
        "idle": args.idle,
        "half_sent": args.half_sent,
        "requests": [str(path) for path in args.request],
        "request_statuses": requests.statuses,
        "connections_reopened": hostile.reopened,
        "interval_s": args.interval,
        "health": phases,
        "latencies_s": {"alone": alone, "hostile": loaded},
    }
    print("phase     probes   p50 ms   p99 ms   max ms")
    for phase, row in phases.items():
        print(
            f"{phase:<8} {row['probes']:>7} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
            f"{row['max_ms']:>8.2f}"
        )
    print(f"hostile connections reopened after the gateway closed them: {hostile.reopened}")
    path = write_result("bench_gateway_hostile", record, stamp=stamp)
    say(f"record: {path}")
    worst = phases["hostile"]["max_ms"]
    return Outcome(
        record,
        path,
        (
            Target(
                "max /health latency with hostile connections held (ms, lower is better)",
                worst,
                args.target_ms,
                worst <= args.target_ms,
            ),
        ),
    )


BENCHMARK = Benchmark("bench_gateway_hostile", __doc__, add_arguments, run)

if __name__ == "__main__":
    raise SystemExit(BENCHMARK.main())
