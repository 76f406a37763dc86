"""What does detserve add to the server it wraps? Sampling overhead and time to ready, in one run.

    .venv/bin/python benchmarks/bench_runtime.py       # 32 x 48: 30 sampling rounds, 3 starts each
    .venv/bin/python benchmarks/bench_runtime.py --rounds 4 --ready-rounds 1   # a quicker look

It runs the tiny CPU container under a profile of its own (configs/tiny-cpu.local.json copied to
``benchmarks/results/bench-profile.json`` with the name ``bench-runtime`` and port 18000, its
manifest filed under that name), so that it never meets another engineer's containers, and
measures in the same run:

* time to ready: ``detserve run`` (the CLI, start-up included; its stages timed from its stderr,
  drawn on a pseudo-terminal as a person sees it) against the same container started bare
  through the Docker SDK with exactly what detserve sends (``build_container_spec(...)
  .to_create_kwargs()``; only the name differs), timed from create to /health 200, /v1/models
  and the same smoke requests. Rounds alternate which goes first; the last ends with ``detserve
  run``, whose server the sampling uses. detserve's own share is the run's wall time minus the
  server's start-to-ready minus the smoke test (target: at most ``--share-target`` seconds); its
  parts (CLI start-up, manifest check, image check, container lookup, snapshot verification)
  are also timed on their own.
* sampling overhead at concurrency 1: ``detserve sample`` (N prompts x T tokens, on a pty)
  against a plain httpx loop sending the same /v1/completions bodies to the same warm server,
  interleaved, order alternating. The target compares the sampler's own ``sampling_seconds``
  (its sidecar's: without the two snapshot verifications and the start-up) with the loop's time,
  round by round: median overhead at most 3%. The CLI's whole wall time against the loop shows
  the fixed costs. The loop's tokens must equal the run log's, or nothing is reported.
* where the sampler's time goes, in ways the server's noise cannot hide: the sampler and the loop
  run in this process with each POST /v1/completions timed apart (what is left is the client's
  own work), and one more sampler run under cProfile splits that work into its checks.

It exits 1 when a target is missed, 2 when the benchmark cannot run. Every container it started
is removed at the end. The table goes to stdout and the whole record to
``benchmarks/results/bench_runtime-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import docker
import docker.errors
import httpx

from benchlib import (
    REPO,
    BenchError,
    Benchmark,
    Outcome,
    Target,
    add_detserve_option,
    add_results_option,
    load_average,
    machine_facts,
    run_child,
    say,
    utc_stamp,
    write_result,
)
from detserve import __version__
from detserve.api import DEFAULT_BUNDLE, DEFAULT_BUNDLE_PIN
from detserve.cli.output import sampling_progress
from detserve.profile import LoadedProfile, container_name, load_profile
from detserve.prompts import PromptBundle, load_bundle
from detserve.runtime.container_spec import build_container_spec, server_base_url
from detserve.runtime.docker_engine import DockerEngine
from detserve.runtime.lifecycle import require_manifest as check_manifest
from detserve.runtime.smoke import SMOKE_LOGPROBS, SMOKE_MAX_TOKENS, SMOKE_PROMPTS
from detserve.runtime.vllm_client import CONNECT_TIMEOUT_S, DEFAULT_TIMEOUT_S, completion_body
from detserve.sampling import SampleRequest, sample
from detserve.snapshot import verify_snapshot

BASE_PROFILE = REPO / "configs" / "tiny-cpu.local.json"
COMMITTED_PROFILE = REPO / "configs" / "tiny-cpu.json"
TARGET_SAMPLING_OVERHEAD = 0.03
DEFAULT_SHARE_TARGET_S = 5.0
POLL_S = 0.05
#: where a profiled client waits for the server (a send can block too, while the server runs)
SOCKET_WAITS = tuple(
    f"<method '{method}' of '_socket.socket' objects>"
    for method in ("recv", "recv_into", "send", "sendall")
)
START_TIMEOUT_S = 900.0
#: what `detserve run` writes on stderr as it enters each stage (lifecycle.run's on_stage)
RUN_STAGES = {
    "start": "starting detserve-",
    "wait": "waiting for http",
    "smoke": "smoke test:",
}


# --- the profile --------------------------------------------------------------------------------


def write_bench_profile(base: Path, name: str, port: int, folder: Path) -> Path:
    """A copy of ``base`` with its own name and port, absolute paths, its manifest filed under it.

    As tests/integration/conftest.py does: the committed manifest is the trust root; the copy is
    filed under this profile's name.
    """
    document: dict[str, Any] = json.loads(base.read_text(encoding="utf-8"))
    if not document["runtime"].get("image"):
        raise BenchError(f"{base} has no pinned image; run `detserve lock-image` first")
    committed = load_profile(base)
    manifest = committed.manifest_path
    manifests = folder / "manifests"
    (manifests / name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(manifest, manifests / name / manifest.name)
    document["name"] = name
    document["runtime"]["port"] = port
    document["snapshot"]["hf_home"] = str(committed.hf_home.resolve())
    document["snapshot"]["manifest_dir"] = str(manifests.resolve())
    path = folder / "bench-profile.json"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def lock_base_profile(detserve: str) -> None:
    """The trust bootstrap of `make demo`: pin the locally built image into the local profile."""
    argv = [detserve, "lock-image", "--config", str(COMMITTED_PROFILE), "--write"]
    argv += ["--profile-output", str(BASE_PROFILE), "--force"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on the port now: as servers do (uvicorn, vLLM), with
    ``SO_REUSEADDR``, so that connections of a run just ended (TIME_WAIT) do not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# --- the requests -------------------------------------------------------------------------------


def new_client(base_url: str) -> httpx.Client:
    # the same transport settings as VllmServer: no proxy from the environment, its timeouts
    return httpx.Client(
        base_url=base_url,
        trust_env=False,
        timeout=httpx.Timeout(DEFAULT_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
    )


def complete(client: httpx.Client, body: dict[str, Any]) -> list[int]:
    response = client.post("/v1/completions", json=body)
    response.raise_for_status()
    tokens: list[int] = response.json()["choices"][0]["token_ids"]
    return tokens


# --- time to ready ------------------------------------------------------------------------------


def epoch(started_at: str) -> float:
    """Docker's ``State.StartedAt`` (RFC 3339, nanoseconds) as epoch seconds."""
    return datetime.fromisoformat(started_at).timestamp()


@dataclass(frozen=True)
class DetserveStart:
    wall_s: float
    cpu_s: float
    #: launch -> "starting ..." on stderr: process start, imports, profile, manifest, engine ping
    cli_startup_s: float
    #: "starting ..." -> "waiting for ...": image check, create, start, reload
    start_stage_s: float
    #: launch -> the container's State.StartedAt
    launch_to_started_s: float
    #: State.StartedAt -> /v1/models serves the pinned name, as detserve's wait saw it
    server_start_to_ready_s: float
    #: ready -> "smoke test: ...": the wait's last poll, verification still running, version
    ready_to_smoke_s: float
    #: "smoke test: ..." -> exit: the smoke test (first completions compile), output, exit
    smoke_and_exit_s: float
    snapshot_verify_s: float

    @property
    def own_share_s(self) -> float:
        return self.wall_s - self.server_start_to_ready_s - self.smoke_and_exit_s

    def as_json(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()} | {
            "own_share_s": round(self.own_share_s, 3)
        }


def time_detserve_run(detserve: str, profile: Path) -> DetserveStart:
    run = run_child(
        [detserve, "run", "--config", str(profile), "--json"], cwd=REPO, markers=RUN_STAGES
    )
    missing = sorted(set(RUN_STAGES) - set(run.marks))
    if missing:
        raise BenchError(f"detserve run printed no stage line for {', '.join(missing)}")
    ran = json.loads(run.stdout)
    wait = ran["wait"]
    if ran["start"]["already_running"]:
        raise BenchError("detserve run found its container already running; nothing was timed")
    started = epoch(wait["container"]["started_at"]) - run.launched
    ready = started + wait["start_to_ready_s"]
    return DetserveStart(
        wall_s=run.seconds,
        cpu_s=run.cpu_seconds,
        cli_startup_s=run.marks["start"],
        start_stage_s=run.marks["wait"] - run.marks["start"],
        launch_to_started_s=started,
        server_start_to_ready_s=wait["start_to_ready_s"],
        ready_to_smoke_s=run.marks["smoke"] - ready,
        smoke_and_exit_s=run.seconds - run.marks["smoke"],
        snapshot_verify_s=wait["snapshot_verified"]["seconds"],
    )


@dataclass(frozen=True)
class BareStart:
    create_s: float
    start_api_s: float
    launch_to_started_s: float
    started_to_health_s: float
    started_to_models_s: float
    smoke_s: float
    total_s: float

    def as_json(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def _container_logs(container: Any) -> str:
    with contextlib.suppress(docker.errors.DockerException):
        raw: bytes = container.logs(tail=30)
        return raw.decode(errors="replace")
    return "(no logs)"


def time_bare_start(client: docker.DockerClient, loaded: LoadedProfile, name: str) -> BareStart:
    """create + start with detserve's own keyword arguments, then poll and smoke like it does."""
    kwargs = build_container_spec(loaded).to_create_kwargs()
    kwargs["name"] = name
    profile = loaded.profile
    served = profile.vllm.served_model_name
    bodies = [
        completion_body(p, SMOKE_MAX_TOKENS, profile.sampling.seed, SMOKE_LOGPROBS, model=served)
        for p in SMOKE_PROMPTS
    ]
    launched = time.time()
    began = time.perf_counter()
    container = client.containers.create(**kwargs)
    created = time.perf_counter()
    container.start()
    start_api = time.perf_counter()
    container.reload()
    started_at = epoch(container.attrs["State"]["StartedAt"])
    health_at = models_at = None
    last_look = time.monotonic()
    with new_client(server_base_url(profile)) as http:
        while models_at is None:
            if time.perf_counter() - began > START_TIMEOUT_S:
                raise BenchError(f"{name} was not ready in {START_TIMEOUT_S:.0f} s")
            if time.monotonic() - last_look > 1.0:
                last_look = time.monotonic()
                container.reload()
                if container.status != "running":
                    raise BenchError(f"{name} stopped:\n{_container_logs(container)}")
            try:
                if health_at is None:
                    if http.get("/health", timeout=5.0).status_code == 200:
                        health_at = time.time()
                else:
                    listed = http.get("/v1/models", timeout=5.0)
                    if listed.status_code == 200 and any(
                        card.get("id") == served for card in listed.json().get("data", [])
                    ):
                        models_at = time.time()
                        continue
            except httpx.HTTPError:
                pass
            time.sleep(POLL_S)
        smoke_began = time.perf_counter()
        for _ in range(2):
            for body in bodies:
                complete(http, body)
        done = time.perf_counter()
    assert health_at is not None
    return BareStart(
        create_s=created - began,
        start_api_s=start_api - created,
        launch_to_started_s=started_at - launched,
        started_to_health_s=health_at - started_at,
        started_to_models_s=models_at - started_at,
        smoke_s=done - smoke_began,
        total_s=done - began,
    )


def remove_container(client: docker.DockerClient, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(name).remove(force=True)


def component_timings(detserve: str, profile: Path, repeat: int) -> dict[str, float]:
    """The parts of detserve's start-up, each timed on its own: median of ``repeat``, in ms."""
    loaded = load_profile(profile)
    engine = DockerEngine.from_env()
    name = container_name(loaded.profile)
    parts: dict[str, Callable[[], object]] = {
        "cli_startup_version": lambda: run_child([detserve, "--version"], cwd=REPO),
        "load_profile": lambda: load_profile(profile),
        "manifest_check": lambda: check_manifest(loaded),
        "engine_ping": DockerEngine.from_env,
        "image_check": lambda: engine.ensure_image(loaded.image),
        "container_spec": lambda: build_container_spec(loaded),
        "container_lookup": lambda: engine.find(name),
        "snapshot_verify": lambda: verify_snapshot(loaded.snapshot_dir, loaded.manifest_path),
    }
    timings: dict[str, float] = {}
    for key, action in parts.items():
        seconds = []
        for _ in range(repeat):
            began = time.perf_counter()
            action()
            seconds.append(time.perf_counter() - began)
        timings[key] = round(statistics.median(seconds) * 1000, 2)
    cpu = [run_child([detserve, "--version"], cwd=REPO).cpu_seconds for _ in range(repeat)]
    timings["cli_startup_version_cpu"] = round(statistics.median(cpu) * 1000, 2)
    return timings


# --- sampling overhead --------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerRun:
    wall_s: float
    cpu_s: float
    sampling_s: float


@dataclass(frozen=True)
class LoopRun:
    seconds: float
    cpu_s: float
    tokens: list[list[int]] = field(repr=False)


def sample_argv(
    detserve: list[str], profile: Path, args: argparse.Namespace, out: Path
) -> list[str]:
    argv = [*detserve, "sample", "--config", str(profile), "--n-prompts", str(args.prompts)]
    argv += ["--max-tokens", str(args.tokens), "--force"]
    argv += ["--run-log-output", str(out / "bench.runlog.jsonl")]
    argv += ["--sidecar-output", str(out / "bench.sidecar.json")]
    if args.logprobs is not None:
        argv += ["--logprobs", str(args.logprobs)]
    return argv


def run_sampler(argv: list[str], out: Path) -> tuple[SamplerRun, list[list[int]]]:
    ran = run_child(argv, cwd=REPO)
    sidecar = json.loads((out / "bench.sidecar.json").read_text(encoding="utf-8"))
    lines = (out / "bench.runlog.jsonl").read_text(encoding="utf-8").splitlines()
    tokens = [json.loads(line)["output_token_ids"] for line in lines[1:-1]]
    timing = SamplerRun(
        wall_s=ran.seconds, cpu_s=ran.cpu_seconds, sampling_s=sidecar["sampling_seconds"]
    )
    return timing, tokens


def run_loop(base_url: str, bodies: list[dict[str, Any]]) -> LoopRun:
    with new_client(base_url) as client:
        # the sampler's client has already asked /v1/models and /version: a warm connection
        client.get("/version").raise_for_status()
        cpu = time.process_time()
        began = time.perf_counter()
        tokens = [complete(client, body) for body in bodies]
        seconds = time.perf_counter() - began
        cpu = time.process_time() - cpu
    return LoopRun(seconds=seconds, cpu_s=cpu, tokens=tokens)


@contextlib.contextmanager
def completion_sends() -> Iterator[list[float]]:
    """Seconds spent inside ``httpx.Client.send`` for each POST /v1/completions.

    That is the server's share of a request (generation, plus sending and reading the bytes);
    the rest of a sampling run is the client's own work, which is what detserve adds to.
    """
    spent: list[float] = []
    original = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        began = time.perf_counter()
        try:
            return original(self, request, **kwargs)
        finally:
            if request.url.path == "/v1/completions":
                spent.append(time.perf_counter() - began)

    with mock.patch.object(httpx.Client, "send", send):
        yield spent


@dataclass(frozen=True)
class ClientWork:
    seconds: float
    #: seconds outside the completion requests: the client's own work
    client_s: float


def sampler_client_work(
    loaded: LoadedProfile, bundle: PromptBundle, args: argparse.Namespace, out: Path
) -> ClientWork:
    """detserve's sampler in this process, with the CLI's own progress display."""
    request = SampleRequest(
        n_prompts=args.prompts,
        max_tokens=args.tokens,
        logprobs=args.logprobs,
        run_log_output=out / "in-process.runlog.jsonl",
        sidecar_output=out / "in-process.sidecar.json",
        force=True,
    )
    engine = DockerEngine.from_env()
    total = len(bundle.take(args.prompts))
    with completion_sends() as spent, sampling_progress(total) as shown:
        summary = sample(
            loaded,
            bundle,
            request,
            engine=engine,
            progress=shown.sampled,
            verify_progress=shown.verified,
        )
    return ClientWork(seconds=summary.seconds, client_s=summary.seconds - sum(spent))


def loop_client_work(base_url: str, bodies: list[dict[str, Any]]) -> ClientWork:
    with completion_sends() as spent:
        loop = run_loop(base_url, bodies)
    return ClientWork(seconds=loop.seconds, client_s=loop.seconds - sum(spent))


def profile_sampler(argv: list[str], out: Path, n_samples: int) -> dict[str, Any]:
    """One more sampler run under cProfile: where the client's time goes (main thread only)."""
    stats_path = out / "sample.prof"
    profiler = [sys.executable, "-m", "cProfile", "-o", str(stats_path), "-m", "detserve"]
    run_child([*profiler, *argv], cwd=REPO)
    stats: Any = pstats.Stats(str(stats_path))

    def cumulative(path_end: str, function: str) -> float:
        found = (
            value[3]
            for (path, _, name), value in stats.stats.items()
            if path.endswith(path_end) and name == function
        )
        return float(sum(found))

    def own(function: str) -> float:
        return float(sum(v[2] for (_, _, name), v in stats.stats.items() if name == function))

    sample_s = cumulative("sampling.py", "sample")
    parts = {
        "sample() total": sample_s,
        "snapshot verification (x2)": cumulative("snapshot.py", "verify_snapshot"),
        "container and model checks": cumulative("binding.py", "checked_container")
        + cumulative("smoke.py", "check_served_model"),
        "waiting on sockets (server, docker)": sum(own(f) for f in SOCKET_WAITS),
        "VllmServer.complete (request, parse)": cumulative("server.py", "complete"),
        "response validation (pydantic)": cumulative("server.py", "_parse"),
        "RunLogWriter.write (validate, hash)": cumulative("runlog/writer.py", "write"),
        "identity check (docker inspect)": cumulative("sampling.py", "check"),
        "progress bar update": cumulative("output.py", "sampled"),
    }
    per_sample = {
        "RunLogWriter.write": parts["RunLogWriter.write (validate, hash)"] / n_samples,
        "identity check": parts["identity check (docker inspect)"] / n_samples,
        "progress bar update": parts["progress bar update"] / n_samples,
        "response validation": parts["response validation (pydantic)"] / n_samples,
    }
    rows = sorted(
        (
            (value[2], f"{Path(path).name}:{line}({name})")
            for (path, line, name), value in stats.stats.items()
        ),
        reverse=True,
    )
    return {
        "note": "cProfile inflates Python work; compare the parts with each other, not with the "
        "timed rounds",
        "parts_s": {k: round(v, 4) for k, v in parts.items()},
        "per_sample_ms": {k: round(v * 1000, 3) for k, v in per_sample.items()},
        "top_own_time": [f"{seconds:.4f} s {where}" for seconds, where in rows[:15]],
    }


# --- the record ---------------------------------------------------------------------------------


def spread(values: Sequence[float], digits: int = 3) -> dict[str, object]:
    return {
        "values": [round(v, digits) for v in values],
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def other_detserve_containers(client: docker.DockerClient, own: set[str]) -> list[str]:
    return sorted(
        c.name for c in client.containers.list(filters={"name": "detserve-"}) if c.name not in own
    )


def runtime_facts(client: docker.DockerClient, loaded: LoadedProfile) -> dict[str, object]:
    """The machine, and the engine, detserve and image this run measured."""
    image = client.images.get(loaded.image)
    return machine_facts() | {
        "docker_engine": client.version().get("Version", "unknown"),
        "detserve": __version__,
        "image": loaded.image,
        "image_id": image.id,
    }


def ms(value: float) -> str:
    return f"{value:8.3f}"


def ready_table(runs: list[DetserveStart], bares: list[BareStart]) -> list[str]:
    lines = [
        f"{'time to ready (s)':<58}"
        + "".join(f"{'r' + str(i + 1):>9}" for i in range(len(runs)))
        + f"{'median':>9}"
    ]
    lines.append("-" * len(lines[0]))

    def row(label: str, values: list[float]) -> None:
        cells = "".join(f" {ms(v)}" for v in values)
        lines.append(f"{label:<58}{cells} {ms(statistics.median(values))}")

    row("detserve run: wall, launch to exit", [r.wall_s for r in runs])
    row("  CLI start-up (imports, profile, manifest, engine ping)", [r.cli_startup_s for r in runs])
    row("  start stage (image check, create, start)", [r.start_stage_s for r in runs])
    row("  launch to container StartedAt", [r.launch_to_started_s for r in runs])
    row(
        "  server StartedAt to ready (as detserve's wait saw it)",
        [r.server_start_to_ready_s for r in runs],
    )
    row(
        "  ready to smoke stage (last poll, verification, version)",
        [r.ready_to_smoke_s for r in runs],
    )
    row("  smoke test (first completions) and exit", [r.smoke_and_exit_s for r in runs])
    row("  snapshot verification (concurrent with loading)", [r.snapshot_verify_s for r in runs])
    row("  detserve's share: wall - server ready - smoke", [r.own_share_s for r in runs])
    row("bare SDK: create", [b.create_s for b in bares])
    row("  start API call", [b.start_api_s for b in bares])
    row("  launch to container StartedAt", [b.launch_to_started_s for b in bares])
    row(
        "  server StartedAt to /health 200 (polled every 50 ms)",
        [b.started_to_health_s for b in bares],
    )
    row("  server StartedAt to /v1/models serves the name", [b.started_to_models_s for b in bares])
    row("  the same smoke requests", [b.smoke_s for b in bares])
    row("  total, create to smoke done", [b.total_s for b in bares])
    row(
        "detserve run wall - bare total (same round)",
        [r.wall_s - b.total_s for r, b in zip(runs, bares, strict=True)],
    )
    return lines


def sampling_table(samplers: list[SamplerRun], loops: list[LoopRun], title: str) -> list[str]:
    header = f"{title:<58}" + "".join(f"{'r' + str(i + 1):>9}" for i in range(len(loops)))
    header += f"{'median':>9}{'min':>9}{'max':>9}"
    lines = [header, "-" * len(header)]

    def row(label: str, values: list[float], unit: float = 1.0) -> None:
        shown = [v * unit for v in values]
        cells = "".join(f" {ms(v)}" for v in shown)
        lines.append(
            f"{label:<58}{cells} {ms(statistics.median(shown))} {ms(min(shown))} {ms(max(shown))}"
        )

    pairs = list(zip(samplers, loops, strict=True))
    row("detserve sample: sampling_seconds (sidecar)", [s.sampling_s for s in samplers])
    row("detserve sample: CLI wall, launch to exit", [s.wall_s for s in samplers])
    row("plain httpx loop, same requests", [lp.seconds for lp in loops])
    row(
        "overhead %: sampling_seconds / loop - 1",
        [s.sampling_s / lp.seconds - 1 for s, lp in pairs],
        100,
    )
    row("overhead %: CLI wall / loop - 1", [s.wall_s / lp.seconds - 1 for s, lp in pairs], 100)
    row("fixed cost: CLI wall - sampling_seconds", [s.wall_s - s.sampling_s for s in samplers])
    row("client CPU: detserve sample process (all of it)", [s.cpu_s for s in samplers])
    row("client CPU: the loop", [lp.cpu_s for lp in loops])
    return lines


# --- one benchmark run --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=int, default=32, help="prompts per sampling run (32)")
    parser.add_argument("--tokens", type=int, default=48, help="output tokens per prompt (48)")
    parser.add_argument("--logprobs", type=int, help="ask for logprobs too (default: none)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=30,
        help="sampling rounds, interleaved (30: single rounds vary by tens of percent here)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (1)")
    parser.add_argument(
        "--client-rounds",
        type=int,
        default=4,
        help="in-process rounds timing the client's own work apart from the requests (4)",
    )
    parser.add_argument(
        "--ready-rounds", type=int, default=3, help="starts of each kind, interleaved (3; 0 skips)"
    )
    parser.add_argument("--name", default="bench-runtime", help="profile name (bench-runtime)")
    parser.add_argument("--port", type=int, default=18000, help="host port (18000)")
    parser.add_argument(
        "--share-target",
        type=float,
        default=DEFAULT_SHARE_TARGET_S,
        help=f"detserve's share of time to ready, seconds ({DEFAULT_SHARE_TARGET_S:g})",
    )
    add_results_option(parser)
    add_detserve_option(parser)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if min(args.prompts, args.tokens, args.rounds, args.warmup, args.client_rounds) < 1:
        parser.error("--prompts, --tokens, --rounds, --warmup, --client-rounds must be >= 1")
    if args.ready_rounds < 0:
        parser.error("--ready-rounds must be 0 or more")


def run(args: argparse.Namespace) -> Outcome:
    try:
        return bench(args)
    except (docker.errors.DockerException, httpx.HTTPError) as exc:
        raise BenchError(f"{type(exc).__name__}: {exc}") from exc


def bench(args: argparse.Namespace) -> Outcome:
    if shutil.which(args.detserve) is None:
        raise BenchError(f"detserve not found at {args.detserve}; run `make venv` first")
    client = docker.from_env()
    if not BASE_PROFILE.is_file():
        say(f"{BASE_PROFILE} is missing: locking the local image into it (as `make demo` does)")
        lock_base_profile(args.detserve)
    args.results.mkdir(parents=True, exist_ok=True)
    profile = write_bench_profile(BASE_PROFILE, args.name, args.port, args.results)
    loaded = load_profile(profile)
    name = container_name(loaded.profile)
    bare_name = f"{name}-bare"
    own = {name, bare_name}
    for existing in own:  # left by an interrupted run of this benchmark: ours to remove
        remove_container(client, existing)
    if not port_is_free(loaded.profile.runtime.host, args.port):
        raise BenchError(f"port {args.port} is in use; pass --port")
    work = Path(tempfile.mkdtemp(prefix="detserve-bench-runtime-"))
    try:
        return measure(args, client, profile, loaded, own, work)
    finally:
        for started in sorted(own):
            remove_container(client, started)
        shutil.rmtree(work, ignore_errors=True)


def measure(
    args: argparse.Namespace,
    client: docker.DockerClient,
    profile: Path,
    loaded: LoadedProfile,
    own: set[str],
    work: Path,
) -> Outcome:
    name = container_name(loaded.profile)
    bare_name = f"{name}-bare"
    started_wall = datetime.now().astimezone()
    facts = runtime_facts(client, loaded)
    load_at_start = load_average()
    others_at_start = other_detserve_containers(client, own)
    say(f"load average {load_at_start}; other detserve containers: {others_at_start or 'none'}")

    # --- time to ready: detserve run against the bare SDK, order alternating
    runs: list[DetserveStart] = []
    bares: list[BareStart] = []
    last = ""
    for index in range(args.ready_rounds):
        # alternate, so that the last round ends with detserve run: its server is sampled from
        last_first = (args.ready_rounds - 1 - index) % 2 == 0
        order = ("bare", "detserve") if last_first else ("detserve", "bare")
        for which in order:
            for existing in own:
                remove_container(client, existing)
            if which == "detserve":
                runs.append(time_detserve_run(args.detserve, profile))
                say(f"ready round {index + 1}: detserve run {runs[-1].wall_s:.1f} s")
            else:
                bares.append(time_bare_start(client, loaded, bare_name))
                say(f"ready round {index + 1}: bare SDK {bares[-1].total_s:.1f} s")
            last = which
    remove_container(client, bare_name)
    if last != "detserve":
        say("starting the server for the sampling rounds (untimed)")
        run_child([args.detserve, "run", "--config", str(profile)], cwd=REPO)
    components = component_timings(args.detserve, profile, repeat=5)

    # --- sampling overhead: detserve sample against a plain httpx loop, interleaved
    base_url = server_base_url(loaded.profile)
    with new_client(base_url) as http:
        vllm_version = http.get("/version").json()["version"]
    bundle = load_bundle(REPO / DEFAULT_BUNDLE, REPO / DEFAULT_BUNDLE_PIN)
    prompts = bundle.take(args.prompts)
    seed = loaded.profile.sampling.seed
    served = loaded.profile.vllm.served_model_name
    # The reference bundle holds completions only: the same bodies detserve sends.
    bodies = [
        completion_body(p.prompt or "", args.tokens, seed, args.logprobs, model=served)
        for p in prompts
    ]
    argv = sample_argv([args.detserve], profile, args, work)
    reference: list[list[int]] | None = None
    for index in range(args.warmup):
        warm = run_loop(base_url, bodies)
        reference = reference or warm.tokens
        _, tokens = run_sampler(argv, work)
        say(f"warm-up {index + 1}: loop {warm.seconds:.2f} s")
        if tokens != reference or warm.tokens != reference:
            raise BenchError("the sampler's run log and the loop got different tokens")
    samplers: list[SamplerRun] = []
    loops: list[LoopRun] = []
    for index in range(args.rounds):
        order = ("sample", "loop") if index % 2 == 0 else ("loop", "sample")
        for which in order:
            if which == "sample":
                sampled, tokens = run_sampler(argv, work)
                samplers.append(sampled)
            else:
                loop = run_loop(base_url, bodies)
                loops.append(loop)
                tokens = loop.tokens
            if tokens != reference:
                raise BenchError(f"round {index + 1}: {which} got other tokens than the warm-up")
        say(
            f"sampling round {index + 1}: sampler {samplers[-1].sampling_s:.3f} s "
            f"(wall {samplers[-1].wall_s:.2f} s), loop {loops[-1].seconds:.3f} s"
        )
    say("client work: the sampler in this process against the loop, requests timed apart")
    sampler_work: list[ClientWork] = []
    loop_work: list[ClientWork] = []
    for index in range(args.client_rounds):
        if index % 2 == 0:
            sampler_work.append(sampler_client_work(loaded, bundle, args, work))
            loop_work.append(loop_client_work(base_url, bodies))
        else:
            loop_work.append(loop_client_work(base_url, bodies))
            sampler_work.append(sampler_client_work(loaded, bundle, args, work))
    say("one more sampler run under cProfile")
    profiled = profile_sampler(sample_argv([], profile, args, work), work, len(prompts))
    load_at_end = load_average()
    others_at_end = other_detserve_containers(client, own)

    # --- verdicts and the record
    overhead = [s.sampling_s / lp.seconds - 1 for s, lp in zip(samplers, loops, strict=True)]
    cli_overhead = [s.wall_s / lp.seconds - 1 for s, lp in zip(samplers, loops, strict=True)]
    overhead_median = statistics.median(overhead)
    extra_work = (
        statistics.median([w.client_s for w in sampler_work])
        - statistics.median([w.client_s for w in loop_work])
    ) / statistics.median([w.seconds for w in loop_work])
    sampling_ok = overhead_median <= TARGET_SAMPLING_OVERHEAD
    share = statistics.median([r.own_share_s for r in runs]) if runs else None
    share_ok = share is None or share <= args.share_target
    record: dict[str, object] = {
        "benchmark": BENCHMARK.name,
        "started_at": started_wall.isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": facts,
        "vllm_version": vllm_version,
        "profile": str(profile),
        "load_average_start": load_at_start,
        "load_average_end": load_at_end,
        "other_detserve_containers_start": others_at_start,
        "other_detserve_containers_end": others_at_end,
        "time_to_ready": {
            "detserve_run": [r.as_json() for r in runs],
            "bare_sdk": [b.as_json() for b in bares],
            "components_median_ms": components,
            "own_share_median_s": None if share is None else round(share, 3),
            "target_s": args.share_target,
            "meets_target": share_ok,
        },
        "sampling": {
            "prompts": len(prompts),
            "max_tokens": args.tokens,
            "logprobs": args.logprobs,
            "output_tokens": sum(len(t) for t in reference or []),
            "sampling_seconds": spread([s.sampling_s for s in samplers]),
            "cli_wall_s": spread([s.wall_s for s in samplers]),
            "loop_s": spread([lp.seconds for lp in loops]),
            "overhead_paired": spread(overhead, 4),
            "overhead_of_medians": round(
                statistics.median([s.sampling_s for s in samplers])
                / statistics.median([lp.seconds for lp in loops])
                - 1,
                4,
            ),
            "cli_overhead_paired": spread(cli_overhead, 4),
            "sampler_cpu_s": spread([s.cpu_s for s in samplers]),
            "client_work": {
                "note": "in-process: seconds of each sampling run spent outside the POST "
                "/v1/completions calls (httpx.Client.send), i.e. the client's own work",
                "sampler_s": spread([w.client_s for w in sampler_work], 4),
                "sampler_total_s": spread([w.seconds for w in sampler_work]),
                "loop_s": spread([w.client_s for w in loop_work], 4),
                "loop_total_s": spread([w.seconds for w in loop_work]),
                "extra_over_loop_time": round(extra_work, 4),
            },
            "loop_cpu_s": spread([lp.cpu_s for lp in loops]),
            "target_overhead": TARGET_SAMPLING_OVERHEAD,
            "meets_target": sampling_ok,
            "profile": profiled,
        },
    }
    stamp = utc_stamp(started_wall.timestamp())
    path = write_result(BENCHMARK.name, record, stamp=stamp, folder=args.results)

    lines = [
        f"{facts['cores']} cores ({facts['cpu_model']}), vLLM {vllm_version}, image {loaded.image}",
        f"load average {load_at_start} at start, {load_at_end} at end; other detserve "
        f"containers: {others_at_start or 'none'} at start, {others_at_end or 'none'} at end",
        "",
    ]
    if runs:
        lines += ready_table(runs, bares)
        lines.append(
            "components, each on its own (median of 5, ms): "
            + ", ".join(f"{k} {v:.2f}" for k, v in components.items())
        )
        lines.append("")
    title = f"sampling {len(prompts)} x {args.tokens}, concurrency 1 (s)"
    lines += sampling_table(samplers, loops, title)
    lines.append(
        "client's own work, outside the completion requests (in-process, median of "
        f"{len(sampler_work)}): sampler "
        f"{statistics.median([w.client_s for w in sampler_work]) * 1000:.1f} ms, loop "
        f"{statistics.median([w.client_s for w in loop_work]) * 1000:.1f} ms per run; the "
        f"difference is {extra_work:+.2%} of the loop's time"
    )
    lines.append("")
    lines.append(
        "cProfile of one sampler run (s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in profiled["parts_s"].items())
    )
    lines.append("")
    verdict = "meets" if sampling_ok else "MISSES"
    lines.append(
        f"sampling overhead {overhead_median:+.1%} (median of {len(overhead)} paired rounds): "
        f"{verdict} the {TARGET_SAMPLING_OVERHEAD:.0%} target"
    )
    if share is not None:
        verdict = "meets" if share_ok else "MISSES"
        lines.append(
            f"detserve's share of time to ready {share:.2f} s (median): {verdict} the "
            f"{args.share_target:g} s target"
        )
    lines.append(f"record: {path}")
    print("\n".join(lines))
    targets = [
        Target(
            "runtime: sampling overhead, median of paired rounds (fraction, at most)",
            round(overhead_median, 4),
            TARGET_SAMPLING_OVERHEAD,
            sampling_ok,
        )
    ]
    if share is not None:
        targets.append(
            Target(
                "runtime: detserve's share of time to ready, median (s, at most)",
                round(share, 3),
                args.share_target,
                share_ok,
            )
        )
    return Outcome(record, path, tuple(targets))


BENCHMARK = Benchmark("bench_runtime", __doc__, add_arguments, run, check_arguments)

if __name__ == "__main__":
    sys.exit(BENCHMARK.main())
