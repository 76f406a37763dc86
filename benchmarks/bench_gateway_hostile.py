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
  at a time, from its own thread (``hostile_load.py``): ``grammar``, a completion constrained by
  a Lark grammar of about 12 KB (260 rules of 6 optional literals, which Lark's Earley compile
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
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench_gateway import percentile, start_gateway, stop_gateway
from benchlib import (
    RESULTS,
    BenchError,
    Benchmark,
    Outcome,
    Target,
    load_average,
    record_head,
    say,
    utc_stamp,
    write_result,
)
from benchstack import add_server_options, bench_profile, prepare_stack, served
from hostile_load import (
    BUILT_IN,
    HostileConnections,
    HostileRequests,
    Sent,
    built_in_request,
    read_request,
)

#: the gateway's metric of how long each transcript line's fsync took
FSYNC_METRIC = "detserve_gateway_transcript_fsync_seconds"


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
    add_server_options(parser, name="bench-gateway-hostile", port=18032, gateway_port=18033)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    chosen = [] if args.hostile == "none" else [name for name in args.hostile.split(",") if name]
    unknown = sorted(set(chosen) - set(BUILT_IN))
    if unknown:
        parser.error(f"--hostile: unknown {', '.join(unknown)} (grammar, regex or none)")
    args.hostile = tuple(dict.fromkeys(chosen))
    for number in ("idle", "half_sent", "probes"):
        if getattr(args, number) < 0 or (number == "probes" and args.probes < 1):
            parser.error(f"--{number.replace('_', '-')} must be positive")


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


def fsync_histogram(url: str) -> list[str]:
    """The gateway's histogram of transcript fsync times (``/metrics``): every answer waits
    for its line's."""
    text = httpx.get(f"{url}/metrics", timeout=30, trust_env=False).text
    return [line for line in text.splitlines() if line.startswith(FSYNC_METRIC)]


def served_model_name(profile: Path) -> str:
    return str(json.loads(profile.read_text(encoding="utf-8"))["vllm"]["served_model_name"])


def run(args: argparse.Namespace) -> Outcome:
    hostile_names: tuple[str, ...] = args.hostile
    files = [(str(path), read_request(path)) for path in args.request]
    prepare_stack(args.detserve, (args.port, args.gateway_port), flags="--port / --gateway-port")
    stamp = utc_stamp()
    load_at_start = load_average()
    RESULTS.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.gateway_port}"
    with tempfile.TemporaryDirectory(prefix="bench-gateway-hostile-", dir=RESULTS) as temp:
        folder = Path(temp)
        profile = bench_profile(args.name, args.port, folder)
        model = served_model_name(profile)
        sent = [
            Sent(name, "/v1/completions", built_in_request(name, model)) for name in hostile_names
        ]
        sent += [Sent(name, *document) for name, document in files]
        gateway_stderr = ""
        with served(profile, args.name, args.port, keep=args.keep):
            gateway = start_gateway(args.detserve, profile, args.gateway_port, folder / "t")
            try:
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
                    fsync = fsync_histogram(url)
                finally:
                    requests.stop()
                    hostile.stop()
            finally:
                gateway_stderr = stop_gateway(gateway)
    # A probe counts as "under every hostile request" when each was in flight as it began.
    every = [latency for began, latency in loaded if all(s.in_flight(began) for s in sent)]
    origin = loaded[0][0]
    phases = {
        "alone": stats([latency for _, latency in alone]),
        "hostile": stats([latency for _, latency in loaded]),
        "every_request_in_flight": stats(every),
    }
    record: dict[str, Any] = record_head("bench_gateway_hostile", stamp) | {
        "load_average_at_start": load_at_start,
        "load_average_after": load_average(),
        "idle": args.idle,
        "half_sent": args.half_sent,
        "hostile_requests": [s.as_json() for s in sent],
        "connections_reopened": hostile.reopened,
        # what the gateway logged (a 500's traceback, say): the record's, never printed raw
        "gateway_stderr_tail": gateway_stderr[-8000:],
        "transcript_fsync_seconds": fsync,
        "interval_s": args.interval,
        "warm_up_s": args.warm_up,
        "health": phases,
        "latencies_s": {
            "alone": [latency for _, latency in alone],
            "hostile": [latency for _, latency in loaded],
        },
        # when each hostile probe began, each send was in flight and each connection was
        # opened again, in seconds from the first hostile probe: what a slow probe ran beside
        "timeline_s": {
            "probes": [round(began - origin, 4) for began, _ in loaded],
            "sends": {
                s.name: [[round(a - origin, 4), round(b - origin, 4)] for a, b in s.spans]
                for s in sent
            },
            "reopened": [round(moment - origin, 4) for moment in hostile.reopened_at],
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
