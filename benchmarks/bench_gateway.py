"""What does the gateway add to the server behind it? Requests/s and p50/p99 latency at
concurrency 1, the gateway and the bare vLLM server side by side, in one run.

    .venv/bin/python benchmarks/bench_gateway.py                 # 32 prompts x 32 tokens, 5 rounds
    .venv/bin/python benchmarks/bench_gateway.py --rounds 2      # a quicker look

On the tiny CPU container under a profile of its own (configs/tiny-cpu.local.json copied with
the name ``bench-gateway`` and port 18030, as bench_runtime.py does): ``detserve run``, then
``detserve serve`` (a separate process, as a user runs it, its transcript in a temporary
directory on the same disk as the results, or ``--transcript-dir``) in front of it. The same
completion prompts (the reference bundle's) go one at a time to both, over keep-alive
connections of one httpx client each: to the gateway the client's body (model, prompt,
max_tokens), to the server the exact bytes the gateway sends it (admitted:
:func:`detserve.gateway.admission.admit`, whose body is
:func:`detserve.gateway.upstream_body.upstream_request`'s). Prompt by prompt, the order alternates.
Every answer's tokens must be the same from both, or nothing is reported.

Latency is one request's wall time at the client; requests/s is the requests over the sum of
their latencies. Target: the gateway's p50 at most ``--target`` (5) % above the server's. The
difference is the gateway's own work per request (admission, the proxy hop, the transcript line
synced to disk, provenance); ``--transcript-dir /dev/shm`` takes the disk's sync out of it, to
see its share. Exit 0 met, 1 missed, 2 could not run. The container is removed at the end; the
record goes to ``benchmarks/results/bench_gateway-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchlib import (
    BUNDLE,
    BUNDLE_PIN,
    REPO,
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
from detserve.gateway.admission import Policy, admit, parse_body
from detserve.profile import load_profile
from detserve.prompts import load_bundle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=int, default=32, help="prompts per round (32)")
    parser.add_argument("--tokens", type=int, default=32, help="output tokens per prompt (32)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (1)")
    parser.add_argument("--target", type=float, default=5.0, help="p50 overhead target, in %% (5)")
    parser.add_argument(
        "--transcript-dir",
        type=Path,
        help="where the gateway's transcript goes (default: a temporary folder under "
        "benchmarks/results, on the disk); /dev/shm shows what the disk's sync costs",
    )
    add_server_options(parser, name="bench-gateway", port=18030, gateway_port=18031)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (p99 of 160 values is the 159th smallest)."""
    ranked = sorted(values)
    return ranked[max(0, min(len(ranked) - 1, round(fraction * len(ranked)) - 1))]


def timed_post(client: httpx.Client, body: bytes) -> tuple[float, list[int]]:
    began = time.perf_counter()
    response = client.post(
        "/v1/completions", content=body, headers={"Content-Type": "application/json"}
    )
    seconds = time.perf_counter() - began
    if response.status_code != 200:
        raise BenchError(f"{client.base_url}: HTTP {response.status_code}: {response.text[:300]}")
    tokens: list[int] = response.json()["choices"][0]["token_ids"]
    return seconds, tokens


def start_gateway(
    detserve: str, profile: Path, port: int, transcripts: Path
) -> subprocess.Popen[str]:
    argv = [detserve, "serve", "--config", str(profile), "--port", str(port)]
    argv += ["--transcript-dir", str(transcripts)]
    process = subprocess.Popen(
        argv, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            raise BenchError(f"detserve serve exited {process.returncode}: {err}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_gateway(process)
    raise BenchError("the gateway did not become healthy in 120 s")


def stop_gateway(process: subprocess.Popen[str]) -> str:
    """Stop the gateway (SIGINT, then SIGKILL after 60 s); what it wrote on stderr."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err or ""


def run(args: argparse.Namespace) -> Outcome:
    prepare_stack(args.detserve, (args.port, args.gateway_port), flags="--port / --gateway-port")
    bundle = load_bundle(BUNDLE, BUNDLE_PIN)
    prompts = [p.prompt for p in bundle.prompts if p.prompt is not None][: args.prompts]
    if len(prompts) < args.prompts:
        raise BenchError(f"{BUNDLE} has only {len(prompts)} completion prompts")
    stamp = utc_stamp()
    RESULTS.mkdir(parents=True, exist_ok=True)
    latencies: dict[str, list[float]] = {"server": [], "gateway": []}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-", dir=RESULTS) as temp:
        folder = Path(temp)
        profile = bench_profile(args.name, args.port, folder)
        with served(profile, args.name, args.port, keep=args.keep):
            transcripts = (args.transcript_dir or folder) / f"transcripts-{stamp}"
            gateway = start_gateway(args.detserve, profile, args.gateway_port, transcripts)
            try:
                say(f"gateway on port {args.gateway_port}; {args.rounds} rounds of {len(prompts)}")
                pinned = load_profile(profile).profile
                seed, model = pinned.sampling.seed, pinned.vllm.served_model_name
                clients = {
                    "server": httpx.Client(
                        base_url=f"http://127.0.0.1:{args.port}", trust_env=False, timeout=120
                    ),
                    "gateway": httpx.Client(
                        base_url=f"http://127.0.0.1:{args.gateway_port}",
                        trust_env=False,
                        timeout=120,
                    ),
                }
                policy = Policy(
                    served_model_name=model,
                    seed=seed,
                    default_max_tokens=pinned.sampling.max_tokens,
                    max_model_len=pinned.vllm.max_model_len,
                    structured_outputs_pinned=pinned.vllm.structured_outputs is not None,
                )
                bodies = {}
                for prompt in prompts:
                    client_body = json.dumps(
                        {"model": model, "prompt": prompt, "max_tokens": args.tokens}
                    ).encode()
                    admitted = admit("completion", parse_body(client_body), policy)
                    bodies[prompt] = {"server": admitted.body, "gateway": client_body}
                for round_ in range(args.warmup + args.rounds):
                    timed = round_ >= args.warmup
                    for number, prompt in enumerate(prompts):
                        order = (
                            ("server", "gateway")
                            if (round_ + number) % 2 == 0
                            else ("gateway", "server")
                        )
                        tokens = {}
                        for side in order:
                            seconds, tokens[side] = timed_post(clients[side], bodies[prompt][side])
                            if timed:
                                latencies[side].append(seconds)
                        if tokens["server"] != tokens["gateway"]:
                            raise BenchError(
                                f"prompt {number}: the gateway's tokens are not the server's"
                            )
                    if timed:
                        say(
                            f"round {round_ - args.warmup + 1}: p50 server "
                            f"{statistics.median(latencies['server']) * 1e3:.2f} ms, gateway "
                            f"{statistics.median(latencies['gateway']) * 1e3:.2f} ms"
                        )
                for client in clients.values():
                    client.close()
            finally:
                stop_gateway(gateway)
    stats = {
        side: {
            "requests": len(values),
            "requests_per_s": round(len(values) / sum(values), 2),
            "p50_ms": round(percentile(values, 0.50) * 1e3, 3),
            "p99_ms": round(percentile(values, 0.99) * 1e3, 3),
        }
        for side, values in latencies.items()
    }
    overhead = (stats["gateway"]["p50_ms"] / stats["server"]["p50_ms"] - 1) * 100
    record: dict[str, Any] = record_head(
        "bench_gateway",
        stamp,
        load_average_after=load_average(),
        prompts=len(prompts),
        tokens=args.tokens,
        rounds=args.rounds,
        transcript_dir=str(args.transcript_dir or "benchmarks/results (temporary)"),
        stats=stats,
        p50_overhead_percent=round(overhead, 2),
        latencies_s=latencies,
    )
    print("side      requests  requests/s   p50 ms   p99 ms")
    for side, row in stats.items():
        print(
            f"{side:<8} {row['requests']:>9} {row['requests_per_s']:>11.2f} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}"
        )
    print(f"gateway p50 overhead: {overhead:+.2f} % (target at most {args.target} %)")
    path = write_result("bench_gateway", record, stamp=stamp)
    say(f"record: {path}")
    return Outcome(
        record,
        path,
        (
            Target(
                "gateway p50 latency over the bare server at concurrency 1 (%, lower is better)",
                round(overhead, 2),
                args.target,
                overhead <= args.target,
            ),
        ),
    )


BENCHMARK = Benchmark("bench_gateway", __doc__, add_arguments, run)

if __name__ == "__main__":
    raise SystemExit(BENCHMARK.main())
