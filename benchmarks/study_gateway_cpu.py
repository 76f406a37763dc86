"""Where does the gateway's own time go? Its CPU time and wall time a request, without Docker.

    .venv/bin/python benchmarks/study_gateway_cpu.py                   # 300 requests, 32 tokens
    .venv/bin/python benchmarks/study_gateway_cpu.py --baseline-src /tmp/base/src
    .venv/bin/python benchmarks/study_gateway_cpu.py --requests 200 --profile /tmp/gateway.prof

On a machine of two cores shared with vLLM's processes, the gateway's CPU time is its latency
(docs/performance.md, "The gateway against the bare server"). This study measures that time
alone, with neither Docker nor a model: a fake vLLM (the unit tests' ``StreamingFakeVllm``, its
answers derived from the prompt, served by uvicorn over keep-alive connections as vLLM serves
them) in a process of its own, and in front of it, each in its own process:

* ``pass-through``: the smallest aiohttp proxy on the gateway's stack (study_gateway_floor.py's),
  the floor any Python proxy here costs;
* ``gateway disk`` and ``gateway shm``: the real gateway (``api.build_gateway`` over a copy of the
  tiny model and the tests' fake container engine, served by ``GatewayServer`` as ``detserve
  serve`` serves it), its transcript on ``--disk`` (the temporary folder's file system) and on
  ``/dev/shm`` (where ``fsync`` costs nothing), so that the sync's share shows;
* with ``--baseline-src DIR``, the same two from another tree's ``src`` (``git archive REV src``
  unpacked), for a before/after measured under the same load.

The reference bundle's completion prompts go one at a time (``max_tokens`` 32) to every proxy in
turn, the order rotating, over one keep-alive httpx client each; the answers' token ids must be
the same everywhere. For each request: its wall time at the client, and the CPU time (user and
system, every thread: the sum of ``/proc/PID/task/*/schedstat``, in nanoseconds) the proxy's
process spent meanwhile. The gateways' paced snapshot pass runs at ``--reverify-rate`` (1 MiB/s,
below ``detserve serve``'s 32, so that it hardly lands inside a request's window: it is not
per-request work); their idle CPU time a second is reported.

``--profile FILE`` runs one more gateway (transcript on the disk) under cProfile, timing each
thread's CPU time (its event loop and its worker threads), writes the merged statistics to FILE
and prints the functions that took the most. cProfile inflates pure-Python code of many small
calls (rfc8785) far more than C: read it for where, and the table for how much. The record goes
to ``benchmarks/results/study_gateway_cpu-<stamp>.json``. A study, not a target.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from benchlib import (
    BUNDLE,
    BUNDLE_PIN,
    REPO,
    load_average,
    machine_facts,
    say,
    utc_stamp,
    write_result,
)
from study_gateway_floor import PASS_THROUGH, wait_answering

#: the warm-up requests each proxy gets before anything is timed
WARM_UP = 20
#: how long the proxies are left idle to measure their background work, in seconds
IDLE_S = 3.0
#: the served model of the tiny profile
MODEL = "tiny-llama"
#: where a transcript may go besides the disk: memory, where a sync is free
SHM = Path("/dev/shm")


# --- the processes (this script, run again with --role) ----------------------------------------


def _serve_engine(port_file: Path) -> None:
    """The fake vLLM under uvicorn (keep-alive, as vLLM's server), until SIGTERM."""
    import json

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    from tests.unit.gateway_rig import StreamingFakeVllm

    from detserve.gateway.listener import bind

    fake = StreamingFakeVllm()

    async def answer(request: Request) -> Response:
        raw = await request.body()
        given = fake.answer(request.method, request.url.path, json.loads(raw) if raw else None)
        return Response(given.data(), given.status, media_type="application/json")

    paths = ("/v1/models", "/version", "/v1/completions", "/v1/chat/completions")
    listener = bind("127.0.0.1", 0)  # TCP_NODELAY on its connections, as uvicorn's own bind
    port_file.write_text(str(listener.getsockname()[1]))
    config = uvicorn.Config(
        Starlette(routes=[Route(path, answer, methods=["GET", "POST"]) for path in paths]),
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
    uvicorn.Server(config).run(sockets=[listener])


def _serve_gateway(args: argparse.Namespace) -> None:
    """The real gateway in front of the fake vLLM, as the unit tests build it, until SIGTERM."""
    from tests.unit.committed import TINY_MODEL_FOLDER, TINY_REVISION, TinyWorkspace
    from tests.unit.containers import faithful_container, pinned_image
    from tests.unit.gateway_rig import gateway_profile
    from tests.unit.test_sampling_faults import FakeEngine

    from detserve import api
    from detserve.gateway.listener import GatewayServer
    from detserve.profile import load_profile
    from detserve.runtime.container_spec import build_container_spec

    root: Path = args.workspace
    model_dir = root / "artifacts" / "hf-cache" / "hub" / TINY_MODEL_FOLDER
    workspace = TinyWorkspace(
        root=root,
        config=root / "configs" / "tiny-cpu.json",
        model_dir=model_dir,
        snapshot=model_dir / "snapshots" / TINY_REVISION,
        manifest=next((root / "manifests" / "tiny-cpu").glob("*.sha256")),
    )
    config = gateway_profile(workspace, args.engine_port)
    spec = build_container_spec(load_profile(config))
    engine = FakeEngine(faithful_container(spec), pinned_image(spec))
    gateway = api.build_gateway(
        config,
        transcript_dir=args.transcripts,
        engine=engine,
        reverify_interval_s=2.0,
        reverify_bytes_per_s=round(args.reverify_rate * 1024 * 1024),
    )
    server = GatewayServer(gateway, "127.0.0.1", 0)
    args.port_file.write_text(str(server.port))
    server.run()  # the transcript is closed by the application's lifespan


def _profiled(run: Callable[[], None], profile_file: Path) -> None:
    """``run()`` under cProfile timing CPU time, on this thread and every thread started
    meanwhile (the gateway's worker threads); the statistics merged into ``profile_file``."""
    import cProfile
    import threading

    profiles: list[cProfile.Profile] = []

    def start_thread(*_: object) -> None:
        thread_profile = cProfile.Profile(time.thread_time)
        profiles.append(thread_profile)
        thread_profile.enable()  # replaces this hook for the thread's lifetime

    main = cProfile.Profile(time.thread_time)
    threading.setprofile(start_thread)
    main.enable()
    try:
        run()
    finally:
        main.disable()
        threading.setprofile(None)
        stats = pstats.Stats(main)
        for thread_profile in profiles:
            with contextlib.suppress(TypeError):  # a thread that recorded nothing
                stats.add(thread_profile)
        stats.dump_stats(profile_file)


# --- starting and stopping them ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answering(url: str, path: str) -> None:
    wait_answering(url, path, deadline_s=60.0, poll_s=0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def _role(
    role: str, port_file: Path, *more: str, src: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """This script as ``role`` (its ``src`` on PYTHONPATH first), serving until the block ends;
    yields the process and the port it listens on."""
    port_file.unlink(missing_ok=True)
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    argv = [sys.executable, __file__, "--role", role, "--port-file", str(port_file), *more]
    process = subprocess.Popen(argv, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {role} did not start ({process.poll()})")
            time.sleep(0.05)
        yield process, int(port_file.read_text())
    finally:
        _stop(process)


# --- measuring ---------------------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """A process's CPU time so far, every live thread's, in nanoseconds (schedstat's first
    field is the time on a CPU, user and system together)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


class Proxy:
    """One proxy process the client posts to, and what each request cost it."""

    def __init__(self, name: str, pid: int, port: int, body: Callable[[str], Any]) -> None:
        self.name = name
        self.pid = pid
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.body = body
        self.wall_ms: list[float] = []
        self.cpu_ms: list[float] = []
        self.idle_ms_per_s = 0.0

    def post(self, prompt: str, *, timed: bool) -> list[int]:
        before = cpu_ns(self.pid)
        started = time.perf_counter()
        answer = self.client.post("/v1/completions", json=self.body(prompt))
        elapsed = time.perf_counter() - started
        spent = cpu_ns(self.pid) - before
        answer.raise_for_status()
        if timed:
            self.wall_ms.append(elapsed * 1000)
            self.cpu_ms.append(spent / 1e6)
        tokens: list[int] = answer.json()["choices"][0]["token_ids"]
        return tokens

    def summary(self) -> dict[str, float]:
        return {
            "wall_p50_ms": round(statistics.median(self.wall_ms), 3),
            "wall_mean_ms": round(statistics.fmean(self.wall_ms), 3),
            "cpu_p50_ms": round(statistics.median(self.cpu_ms), 3),
            "cpu_mean_ms": round(statistics.fmean(self.cpu_ms), 3),
            "idle_cpu_ms_per_s": round(self.idle_ms_per_s, 3),
        }


def _bodies(tokens: int) -> tuple[Callable[[str], Any], Callable[[str], Any]]:
    """What a client sends the gateway, and what the gateway sends the engine, for a prompt."""

    def gateway_body(prompt: str) -> dict[str, Any]:
        return {"model": MODEL, "prompt": prompt, "max_tokens": tokens}

    def engine_body(prompt: str) -> dict[str, Any]:
        return gateway_body(prompt) | {
            "temperature": 0, "seed": 0, "n": 1, "stream": False, "return_token_ids": True,
        }  # fmt: skip

    return gateway_body, engine_body


def _timed_rounds(proxies: list[Proxy], prompts: list[str], requests: int) -> None:
    for proxy in proxies:
        _answering(proxy.url, "/v1/completions")
    before = {proxy.name: cpu_ns(proxy.pid) for proxy in proxies}
    time.sleep(IDLE_S)
    for proxy in proxies:
        proxy.idle_ms_per_s = (cpu_ns(proxy.pid) - before[proxy.name]) / 1e6 / IDLE_S
    for number in range(WARM_UP + requests):
        prompt = prompts[number % len(prompts)]
        turn = number % len(proxies)
        order = proxies[turn:] + proxies[:turn]
        tokens = {proxy.name: proxy.post(prompt, timed=number >= WARM_UP) for proxy in order}
        if len({str(ids) for ids in tokens.values()}) != 1:
            raise SystemExit(f"the proxies answered other tokens: {tokens}")


def _measure(
    args: argparse.Namespace, work: Path, engine_port: int, prompts: list[str]
) -> dict[str, Any]:
    gateway_body, engine_body = _bodies(args.tokens)
    trees: dict[str, Path | None] = {"gateway": None}
    if args.baseline_src is not None:
        trees["baseline"] = args.baseline_src
    with contextlib.ExitStack() as stack:
        floor_port = _free_port()
        engine_url = f"http://127.0.0.1:{engine_port}"
        floor = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PASS_THROUGH["aiohttp pass-through"],
                engine_url,
                str(floor_port),
            ]
        )
        stack.callback(_stop, floor)
        proxies = [Proxy("pass-through", floor.pid, floor_port, engine_body)]
        for tree, src in trees.items():
            for where, folder in (("disk", args.disk), ("shm", SHM)):
                temp = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="study-gateway-cpu-", dir=folder)
                )
                name = f"{tree} {where}"
                more = ["--workspace", str(work / "repo"), "--engine-port", str(engine_port)]
                more += ["--transcripts", f"{temp}/transcripts"]
                more += ["--reverify-rate", str(args.reverify_rate)]
                # each its own records: gateways of two trees (record formats) beside one another
                # on one snapshot would void each other's at start
                more += ["--state-dir", f"{temp}/state"]
                port_file = work / f"{name.replace(' ', '-')}.port"
                process, port = stack.enter_context(_role("gateway", port_file, *more, src=src))
                proxies.append(Proxy(name, process.pid, port, gateway_body))
        say(f"{len(proxies)} proxies, {args.requests} timed requests each, in turn")
        _timed_rounds(proxies, prompts, args.requests)
    return {proxy.name: proxy.summary() for proxy in proxies}


def _profile(args: argparse.Namespace, work: Path, engine_port: int, prompts: list[str]) -> None:
    gateway_body, _ = _bodies(args.tokens)
    more = ["--workspace", str(work / "repo"), "--engine-port", str(engine_port)]
    more += ["--transcripts", str(work / "profiled-transcripts")]  # on the disk, with its sync
    more += ["--reverify-rate", str(args.reverify_rate), "--profile", str(args.profile)]
    with _role("gateway", work / "profiled.port", *more) as (_, port):
        _answering(f"http://127.0.0.1:{port}", "/health")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for number in range(WARM_UP + args.requests):
                client.post("/v1/completions", json=gateway_body(prompts[number % len(prompts)]))
    stats = pstats.Stats(str(args.profile))
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="timed requests per proxy")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each request")
    parser.add_argument(
        "--disk",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="a folder on the disk the transcript goes to (the temporary folder)",
    )
    parser.add_argument("--baseline-src", type=Path, help="another tree's src, measured beside")
    parser.add_argument(
        "--reverify-rate", type=float, default=1.0, help="the gateways' paced pass, MiB/s (1)"
    )
    parser.add_argument("--profile", type=Path, help="also profile a gateway into this file")
    parser.add_argument("--top", type=int, default=40, help="profile lines printed")
    parser.add_argument("--role", choices=("engine", "gateway"), help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--transcripts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # the unit tests' fakes: tests.unit.*
    # first: the tests' helpers import one another through their conftest
    from tests.unit.conftest import copy_tiny_workspace

    if args.role == "engine":
        _serve_engine(args.port_file)
        return 0
    if args.role == "gateway":
        if args.state_dir is not None:
            os.environ["DETSERVE_STATE_DIR"] = str(args.state_dir)
        if args.profile is None:
            _serve_gateway(args)
        else:
            _profiled(lambda: _serve_gateway(args), args.profile)
        return 0
    from detserve.prompts import load_bundle

    bundle = load_bundle(BUNDLE, BUNDLE_PIN)
    prompts = [prompt.prompt for prompt in bundle.prompts if prompt.prompt is not None]
    with tempfile.TemporaryDirectory(prefix="study-gateway-cpu-", dir=args.disk) as temp:
        work = Path(temp)
        copy_tiny_workspace(work)
        with _role("engine", work / "engine.port") as (_, engine_port):
            _answering(f"http://127.0.0.1:{engine_port}", "/version")
            runs = _measure(args, work, engine_port, prompts)
            if args.profile is not None:
                _profile(args, work, engine_port, prompts)
    floor = runs["pass-through"]
    print("proxy            wall p50 ms  wall mean  CPU p50 ms  CPU mean  idle CPU ms/s")
    for name, run in runs.items():
        print(
            f"{name:<16} {run['wall_p50_ms']:11.3f} {run['wall_mean_ms']:10.3f}"
            f" {run['cpu_p50_ms']:11.3f} {run['cpu_mean_ms']:9.3f} {run['idle_cpu_ms_per_s']:14.2f}"
        )
    print("over the pass-through (p50): " + ", ".join(
        f"{name} +{run['wall_p50_ms'] - floor['wall_p50_ms']:.3f} ms wall, "
        f"+{run['cpu_p50_ms'] - floor['cpu_p50_ms']:.3f} ms CPU"
        for name, run in runs.items() if name != "pass-through"
    ))  # fmt: skip
    record = {
        "benchmark": "study_gateway_cpu",
        "machine": machine_facts(),
        "load_average": load_average(),
        "requests": args.requests,
        "tokens": args.tokens,
        "reverify_rate_mib_s": args.reverify_rate,
        "disk": str(args.disk),
        "baseline_src": None if args.baseline_src is None else str(args.baseline_src),
        "runs": runs,
    }
    say(f"record: {write_result('study_gateway_cpu', record, stamp=utc_stamp())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
