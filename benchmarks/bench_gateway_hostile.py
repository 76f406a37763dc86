"""Does the gateway's /health still answer quickly while hostile clients and hostile requests
are in flight? p50, p99 and max /health latency, first alone, then with idle and half-sent
connections held and a hostile grammar and a catastrophic regex in flight, in one run.

    .venv/bin/python benchmarks/bench_gateway_hostile.py                # the defaults below
    .venv/bin/python benchmarks/bench.py gateway-hostile --probes 100   # the same, fewer probes
    make bench-gateway BENCH_GATEWAY_HOSTILE_ARGS="--probes 300"        # the same, through make
    .venv/bin/python benchmarks/bench_gateway_hostile.py --hostile none --request body.json

On the tiny CPU container under a profile of its own (configs/tiny-cpu.local.json copied with
the name ``bench-gateway-hostile`` and port 18032; it pins xgrammar): ``detserve run``, then
``detserve serve`` (a separate process, its transcript in a temporary folder under
benchmarks/results) in front of it. First ``--probes`` GET /health, each on a fresh connection,
``--interval`` seconds apart: the baseline. Then, all at once and held for as long as the probes
run:

* ``--idle`` connections that never send a byte and ``--half-sent`` connections that send the
  start of a request and then a byte a second (a slowloris); each one the gateway closes (its
  header deadline, or the connection cap) is opened again at once;
* the built-in hostile requests (``--hostile``, both by default), each sent again and again, one
  at a time, from its own thread: ``grammar``, a completion constrained by a Lark grammar of about
  12 KB (:func:`hostile_grammar`: 260 rules of 6 optional literals, which Lark's Earley compile
  expands into 2**6 alternatives each: seconds of the checker's child, then the engine's
  xgrammar compile, then an Earley parse of the output); ``regex``, a completion whose JSON
  schema holds the catastrophic pattern ``^(a|aa)*c$`` beside an ``enum`` of 60 ``a``: the engine
  writes the enum's string, and the gateway's check of it (Python's ``re``, as ``jsonschema``
  uses it) backtracks until the checker's 10 s limit stops it (``not_checked``);
* each ``--request FILE`` (a JSON object ``{"path": "/v1/completions", "body": {...}}``), sent
  the same way.

Then the same probes again. A probe's latency is its wall time at the client, connection
included; the record says how many probes ran while every hostile request was in flight, and
what each hostile request was answered. Target: the max under hostile load at most
``--target-ms`` (100) ms. Exit 0 met, 1 missed, 2 could not run. The container is removed at the
end; the record goes to ``benchmarks/results/bench_gateway_hostile-<stamp>.json``.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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
#: the built-in hostile requests (``--hostile``)
BUILT_IN = ("grammar", "regex")
#: Python's ``re`` tries every way of splitting a run of ``a`` into ``a`` and ``aa`` (Fibonacci
#: many) before it gives up on the missing ``c``
CATASTROPHIC_PATTERN = "^(a|aa)*c$"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--idle", type=int, default=100, help="idle connections held (100)")
    parser.add_argument("--half-sent", type=int, default=100, help="half-sent requests held (100)")
    parser.add_argument("--probes", type=int, default=400, help="/health probes per phase (400)")
    parser.add_argument(
        "--interval", type=float, default=0.05, help="seconds between probes (0.05)"
    )
    parser.add_argument(
        "--hostile",
        default=",".join(BUILT_IN),
        help="built-in hostile requests in flight meanwhile: grammar, regex, both comma-separated "
        "(the default) or none",
    )
    parser.add_argument(
        "--request",
        type=Path,
        action="append",
        default=[],
        help="another hostile request in flight meanwhile: a JSON file {path, body} (repeatable)",
    )
    parser.add_argument(
        "--warm-up",
        type=float,
        default=3.0,
        help="seconds the hostile load runs before the probes begin (3)",
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


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    chosen = [] if args.hostile == "none" else [name for name in args.hostile.split(",") if name]
    unknown = sorted(set(chosen) - set(BUILT_IN))
    if unknown:
        parser.error(f"--hostile: unknown {', '.join(unknown)} (grammar, regex or none)")
    args.hostile = tuple(dict.fromkeys(chosen))
    for number in ("idle", "half_sent", "probes"):
        if getattr(args, number) < 0 or (number == "probes" and args.probes < 1):
            parser.error(f"--{number.replace('_', '-')} must be positive")


# --- the hostile requests ------------------------------------------------------------------------


def hostile_grammar(nonce: int, rules: int = 260, optionals: int = 6) -> str:
    """A Lark grammar of about 12 KB (under the gateway's 16 KiB cap): ``start`` is any of
    ``rules`` rules, each ``optionals`` optional one-letter literals then ``"z"``, or the literal
    ``q<nonce>``. Lark's Earley compile expands every optional into alternatives, 2**optionals a
    rule (about 1.7 s here, within the checker's 10 s: it is admitted and sent on); the engine's
    xgrammar compiles it again, and the gateway parses the output with it. The nonce makes each
    send a grammar neither the checker's nor the engine's cache has seen."""
    lines = ["start: " + " | ".join(f"r{i}" for i in range(rules)) + f' | "q{nonce}"']
    for i in range(rules):
        letters = (chr(ord("a") + (i + j) % 25) for j in range(optionals))
        lines.append(f"r{i}: " + " ".join(f'"{letter}"?' for letter in letters) + ' "z"')
    return "\n".join(lines) + "\n"


def catastrophic_schema(run: int = 60) -> dict[str, Any]:
    """A JSON schema whose one string must match :data:`CATASTROPHIC_PATTERN` and be ``run``
    letters ``a`` (an ``enum``): the engine writes the enum's string, and a check of it against
    the pattern backtracks through about 1.6**run ways before it fails."""
    value = {"type": "string", "pattern": CATASTROPHIC_PATTERN, "enum": ["a" * run]}
    return {
        "type": "object",
        "properties": {"s": value},
        "required": ["s"],
        "additionalProperties": False,
    }


def built_in_request(name: str, model: str) -> Callable[[int], Any]:
    """The body of a built-in hostile request (a completion), given its send's number."""
    if name == "grammar":
        return lambda nonce: {
            "model": model,
            "prompt": "Write one word",
            "max_tokens": 16,
            "structured_outputs": {"grammar": hostile_grammar(nonce)},
        }
    schema = catastrophic_schema()
    return lambda _: {
        "model": model,
        "prompt": "Write a run of the letter a",
        "max_tokens": 128,
        "structured_outputs": {"json": schema},
    }


def read_request(path: Path) -> tuple[str, Callable[[int], Any]]:
    """A ``--request`` file's path and body (the same each send)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or {"path", "body"} - document.keys():
        raise BenchError(f"{path}: expected a JSON object with a path and a body")
    body = document["body"]
    return str(document["path"]), lambda _: body


@dataclass
class Sent:
    """One hostile request, sent again and again: when each send was in flight, and what the
    gateway answered (status, ``constraint_check`` or error ``code``; gateway text never
    printed raw)."""

    name: str
    path: str
    #: the body of each send, given its number
    body_for: Callable[[int], Any]
    spans: list[tuple[float, float]] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    #: the first error message, for the record
    first_error: str | None = None
    began: float | None = None

    def answered(self, response: httpx.Response | None) -> str:
        if response is None:
            return "no answer"
        try:
            document = response.json()
        except ValueError:
            return f"{response.status_code} not JSON"
        if not isinstance(document, dict):
            return f"{response.status_code} not an object"
        if response.status_code == 200:
            check = document.get("detserve", {}).get("constraint_check")
            return f"200 {check}"
        error = document.get("error")
        error = error if isinstance(error, dict) else {}
        if self.first_error is None:
            self.first_error = str(error.get("message"))[:500]
        return f"{response.status_code} {error.get('code')}"

    def in_flight(self, moment: float) -> bool:
        if self.began is not None and self.began <= moment:
            return True  # the send under way when the probes ended
        return any(start <= moment <= end for start, end in self.spans)

    def as_json(self) -> dict[str, Any]:
        durations = [end - start for start, end in self.spans]
        return {
            "name": self.name,
            "path": self.path,
            "body_bytes": len(json.dumps(self.body_for(0))),
            "answers": dict(self.answers),
            "completed": len(self.spans),
            "median_s": round(statistics.median(durations), 3) if durations else None,
            "max_s": round(max(durations), 3) if durations else None,
            "first_error": self.first_error,
        }


class HostileRequests:
    """Each request sent again and again, one at a time, from its own thread, until
    :meth:`stop`."""

    def __init__(self, base_url: str, requests: list[Sent]) -> None:
        self.base_url = base_url
        self.requests = requests
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, args=(sent,), daemon=True) for sent in requests
        ]

    def _send(self, sent: Sent) -> None:
        with httpx.Client(base_url=self.base_url, trust_env=False, timeout=600) as client:
            while not self._stop.is_set():
                body = sent.body_for(len(sent.spans))
                sent.began = time.perf_counter()
                try:
                    response: httpx.Response | None = client.post(sent.path, json=body)
                except httpx.HTTPError:
                    response = None
                sent.spans.append((sent.began, time.perf_counter()))
                sent.began = None
                sent.answers[sent.answered(response)] += 1

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=0)


# --- the hostile connections ---------------------------------------------------------------------


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


# --- the probes ----------------------------------------------------------------------------------


def probe(port: int, count: int, interval: float) -> list[tuple[float, float]]:
    """``count`` GET /health, each on a fresh connection: when each began (``perf_counter``) and
    its wall time in seconds (a raw socket: an HTTP client's own set-up, such as httpx's TLS
    context, is not the gateway's)."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % port
    probes = []
    for _ in range(count):
        began = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        probes.append((began, time.perf_counter() - began))
        if not answer.startswith(b"HTTP/1.1 200"):
            raise BenchError(f"/health answered: {answer[:300]!r}")
        time.sleep(interval)
    return probes


def stats(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"probes": 0}
    return {
        "probes": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
        "max_ms": round(max(latencies) * 1e3, 3),
    }


def served_model_name(profile: Path) -> str:
    return str(json.loads(profile.read_text(encoding="utf-8"))["vllm"]["served_model_name"])


def run(args: argparse.Namespace) -> Outcome:
    hostile_names: tuple[str, ...] = args.hostile
    files = [(str(path), read_request(path)) for path in args.request]
    if not BASE_PROFILE.is_file():
        lock_base_profile(args.detserve)
    for port in (args.port, args.gateway_port):
        if not port_is_free("127.0.0.1", port):
            raise BenchError(f"port {port} is taken; pass --port / --gateway-port")
    stamp = utc_stamp()
    load_at_start = load_average()
    RESULTS.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.gateway_port}"
    with tempfile.TemporaryDirectory(prefix="bench-gateway-hostile-", dir=RESULTS) as temp:
        folder = Path(temp)
        profile = write_bench_profile(BASE_PROFILE, args.name, args.port, folder)
        model = served_model_name(profile)
        sent = [
            Sent(name, "/v1/completions", built_in_request(name, model)) for name in hostile_names
        ]
        sent += [Sent(name, *document) for name, document in files]
        gateway = None
        try:
            say(f"starting {args.name} on port {args.port}")
            api.run(profile, on_stage=say)
            gateway = start_gateway(args.detserve, profile, args.gateway_port, folder / "t")
            say(f"gateway on port {args.gateway_port}: {args.probes} probes alone")
            alone = probe(args.gateway_port, args.probes, args.interval)
            hostile = HostileConnections(args.gateway_port, args.idle, args.half_sent)
            requests = HostileRequests(url, sent)
            hostile.start()
            requests.start()
            try:
                say(
                    f"{args.idle} idle and {args.half_sent} half-sent connections held, "
                    f"{len(sent)} hostile requests in flight "
                    f"({', '.join(s.name for s in sent) or 'none'}): {args.warm_up:g} s, then "
                    f"{args.probes} probes"
                )
                time.sleep(args.warm_up)
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
    # A probe counts as "under every hostile request" when each was in flight as it began.
    every = [latency for began, latency in loaded if all(s.in_flight(began) for s in sent)]
    phases = {
        "alone": stats([latency for _, latency in alone]),
        "hostile": stats([latency for _, latency in loaded]),
        "every_request_in_flight": stats(every),
    }
    record: dict[str, Any] = {
        "benchmark": "bench_gateway_hostile",
        "stamp": stamp,
        "machine": machine_facts(),
        "load_average_at_start": load_at_start,
        "load_average_after": load_average(),
        "idle": args.idle,
        "half_sent": args.half_sent,
        "hostile_requests": [s.as_json() for s in sent],
        "connections_reopened": hostile.reopened,
        "interval_s": args.interval,
        "warm_up_s": args.warm_up,
        "health": phases,
        "latencies_s": {
            "alone": [latency for _, latency in alone],
            "hostile": [latency for _, latency in loaded],
        },
    }
    print("phase                      probes   p50 ms   p99 ms   max ms")
    for phase, row in phases.items():
        if row["probes"]:
            print(
                f"{phase:<25} {row['probes']:>7} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
                f"{row['max_ms']:>8.2f}"
            )
        else:
            print(f"{phase:<25} {0:>7}")
    print(f"hostile connections reopened after the gateway closed them: {hostile.reopened}")
    for s in sent:
        # the answers' keys hold a status and a code or check the gateway sent: escaped
        print(f"{s.name}: {len(s.spans)} answered, {json.dumps(dict(s.answers))}")
    path = write_result("bench_gateway_hostile", record, stamp=stamp)
    say(f"record: {path}")
    worst = phases["hostile"]["max_ms"]
    return Outcome(
        record,
        path,
        (
            Target(
                "max /health latency with hostile connections and requests (ms, lower is better)",
                worst,
                args.target_ms,
                worst <= args.target_ms,
            ),
        ),
    )


BENCHMARK = Benchmark("bench_gateway_hostile", __doc__, add_arguments, run, check_arguments)

if __name__ == "__main__":
    raise SystemExit(BENCHMARK.main())
