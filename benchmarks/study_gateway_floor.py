"""How much of the gateway's latency would any Python proxy add here? The floor under its target.

    .venv/bin/python benchmarks/study_gateway_floor.py               # 150 requests each, 32 tokens
    .venv/bin/python benchmarks/study_gateway_floor.py --requests 50

On the tiny CPU container (a profile of its own, port 18060, as bench_runtime.py makes), four
paths to the same server, one request at a time, interleaved request by request (the order
rotating):

1. ``server``: the bare vLLM server through its published port, the exact body the gateway would
   send it (what a client without the gateway uses);
2. ``httpx pass-through`` and 3. ``aiohttp pass-through``: the smallest proxy on the gateway's
   server stack (Starlette under uvicorn with uvloop and httptools) with one hop to the
   container's own address (the one the gateway uses, read from its ``/health``), through
   ``httpx.AsyncClient`` or ``aiohttp.ClientSession``; each forwards the body and the answer and
   does nothing else: no admission, no transcript, no provenance;
4. ``gateway``: ``detserve serve``, its transcript on the disk (``--transcript-dir``).

Every answer's token ids must be the same on every path. The table gives each path's median
latency, its excess over the server, and each proxy's CPU time per request (user + system, from
``/proc``): on two cores that vLLM's processes share, a proxy's CPU time is latency. The
pass-throughs' excess is what the stack costs before the gateway does any work of its own. This
is a study, not a target; the record goes to
``benchmarks/results/study_gateway_floor-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench_runtime import BASE_PROFILE, lock_base_profile, port_is_free, write_bench_profile
from benchlib import REPO, load_average, machine_facts, say, utc_stamp, write_result
from detserve import api

_PASS_THROUGH_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
{client}
app = Starlette(routes=[Route("/v1/completions", forward, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
            access_log=False, loop="uvloop", http="httptools")
"""

#: the pass-through proxies, each run as its own process as the gateway is
PASS_THROUGH = {
    "httpx pass-through": _PASS_THROUGH_APP.format(
        client="""
import httpx
client = httpx.AsyncClient(base_url=sys.argv[1], timeout=60, trust_env=False)

async def forward(request):
    answer = await client.post(
        "/v1/completions", content=await request.body(),
        headers={"content-type": "application/json"},
    )
    return Response(answer.content, answer.status_code, media_type="application/json")
"""
    ),
    "aiohttp pass-through": _PASS_THROUGH_APP.format(
        client="""
import aiohttp
session = None

async def forward(request):
    global session
    if session is None:
        session = aiohttp.ClientSession(base_url=sys.argv[1], trust_env=False)
    body = await request.body()
    async with session.post(
        "/v1/completions", data=body, headers={"content-type": "application/json"}
    ) as answer:
        content = await answer.read()
    return Response(content, answer.status, media_type="application/json")
"""
    ),
}


def _cpu_s(pid: int) -> float:
    """A process's user + system CPU time so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_answering(url: str, path: str, deadline_s: float = 120, poll_s: float = 0.3) -> None:
    """Until ``url + path`` answers 200 or 405 (a POST route asked with GET); exit after
    ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=5).status_code in (200, 405):
                return
        except httpx.TransportError:
            pass
        time.sleep(poll_s)
    raise SystemExit(f"{url} did not answer in {deadline_s:g} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=150, help="timed requests per path")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each request")
    parser.add_argument("--port", type=int, default=18060, help="the server's port (+1..+3 used)")
    args = parser.parse_args()
    names = ["server", *PASS_THROUGH, "gateway"]
    ports = {name: args.port + offset for offset, name in enumerate(names)}
    if not all(port_is_free("127.0.0.1", port) for port in ports.values()):
        raise SystemExit(f"ports {sorted(ports.values())} must be free")
    if not BASE_PROFILE.is_file():
        lock_base_profile(str(REPO / ".venv" / "bin" / "detserve"))
    upstream = {
        "model": "tiny-llama", "prompt": "The quick brown fox", "max_tokens": args.tokens,
        "temperature": 0, "seed": 0, "n": 1, "stream": False, "return_token_ids": True,
    }  # fmt: skip
    client_body = {
        "model": "tiny-llama",
        "prompt": "The quick brown fox",
        "max_tokens": args.tokens,
    }
    latencies: dict[str, list[float]] = {name: [] for name in names}
    cpu_s: dict[str, float] = {name: 0.0 for name in names[1:]}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="study-gateway-floor-") as temp:
        profile = write_bench_profile(BASE_PROFILE, "study-floor", args.port, Path(temp))
        say("starting the server")
        api.run(profile)
        try:
            processes["gateway"] = subprocess.Popen(
                [sys.executable, "-m", "detserve", "serve", "--config", str(profile),
                 "--transcript-dir", str(Path(temp) / "transcripts"),
                 "--port", str(ports["gateway"])],
                cwd=REPO,
            )  # fmt: skip
            wait_answering(url["gateway"], "/health")
            direct = httpx.get(url["gateway"] + "/health", timeout=10).json()["upstream"]
            say(f"the pass-throughs and the gateway reach the server at {direct}")
            for name, source in PASS_THROUGH.items():
                processes[name] = subprocess.Popen(
                    [sys.executable, "-c", source, direct, str(ports[name])]
                )
                wait_answering(url[name], "/v1/completions")
            clients = {name: httpx.Client(base_url=url[name], timeout=60) for name in names}
            for number in range(args.requests + 10):  # 10 warm-up rounds, not timed
                tokens: dict[str, Any] = {}
                turn = number % len(names)
                for name in names[turn:] + names[:turn]:
                    body = client_body if name == "gateway" else upstream
                    pid = processes[name].pid if name in processes else None
                    cpu_before = _cpu_s(pid) if pid else 0.0
                    started = time.perf_counter()
                    answer = clients[name].post("/v1/completions", json=body)
                    elapsed = time.perf_counter() - started
                    answer.raise_for_status()
                    tokens[name] = answer.json()["choices"][0]["token_ids"]
                    if number >= 10:
                        latencies[name].append(elapsed * 1000)
                        if pid:
                            cpu_s[name] += _cpu_s(pid) - cpu_before
                if len({str(t) for t in tokens.values()}) != 1:
                    raise SystemExit(f"the paths answered other tokens: {tokens}")
        finally:
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                process.wait(60)
            api.stop(profile)
    medians = {name: statistics.median(values) for name, values in latencies.items()}
    cpu_ms = {name: seconds * 1000 / args.requests for name, seconds in cpu_s.items()}
    print("path                   p50 ms   over the server   CPU ms a request")
    for name, median in medians.items():
        cpu = f"{cpu_ms[name]:16.2f}" if name in cpu_ms else ""
        print(f"{name:<21} {median:7.2f}   {(median / medians['server'] - 1) * 100:+13.1f} %{cpu}")
    record = {
        "benchmark": "study_gateway_floor",
        "machine": machine_facts(),
        "load_average": load_average(),
        "requests": args.requests,
        "tokens": args.tokens,
        "upstream": direct,
        "p50_ms": {name: round(value, 3) for name, value in medians.items()},
        "excess_percent": {
            name: round((value / medians["server"] - 1) * 100, 2) for name, value in medians.items()
        },
        "cpu_ms_per_request": {name: round(value, 3) for name, value in cpu_ms.items()},
    }
    say(f"record: {write_result('study_gateway_floor', record, stamp=utc_stamp())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
