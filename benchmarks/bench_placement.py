"""CPU placement chosen per workload: concurrency 1 as fast as the unplaced server, 32 at 8x.

    .venv/bin/python benchmarks/bench_placement.py   # 40 paired rounds, about 27 min
    .venv/bin/python benchmarks/bench_placement.py --rounds 2 --prompts 16 --tokens 16
    .venv/bin/python benchmarks/bench_placement.py --policy engine-core-with-worker   # the toll

Two profiles of the tiny CPU container (configs/tiny-cpu.local.json copied as bench_runtime.py
does): ``bench-placed`` with ``runtime.cpu_placement`` = ``--policy`` (default
``engine-core-with-worker-when-concurrent``) on port 18040, and ``bench-unplaced`` with none on
18041. Both are started once (``detserve run``) and each is certified once (``detserve check`` at
tier 1, 2 runs, levels 1 and 32, signed with a key made for the run). Two vLLM CPU engines would
share the two cores, so only one runs at a time: the other is paused (the cgroup freezer, through
the Docker SDK), which stops every one of its threads, spinning ones included.

Each round is one block per profile, the same workload in both: ``sample --concurrency 32``
(certified; the placed profile's policy places the processes first), then ``sample
--concurrency 1`` (the policy releases them: the hard case, one request after a placed run). The
block that goes first alternates from round to round, so that a drift of the machine falls on
both alike. A round gives one paired ratio, placed concurrency 1 over unplaced concurrency 1,
measured a few seconds apart; the spread between container lifetimes and the machine's slow
drift, which moved single rounds by ±10 % (docs/performance.md), cancel in the pair.

Throughput is each sample's own ``sampling_seconds``. Every run log must be byte-identical to
the first: placement decides where, never what.

Targets: the paired ratio's median at least ``--c1-target`` (0.97) with its lower confidence
bound (distribution-free, from the order statistics of the ratios, ``--confidence`` 0.95
two-sided) at least that too, so that the noise cannot be what meets it; and placed concurrency 32
at least ``--target`` (8) times placed concurrency 1 (medians). Exit 0 met, 1 missed, 2 could not
run. The containers are removed at the end; the record goes to
``benchmarks/results/bench_placement-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import docker

from benchlib import (
    BUNDLE,
    BUNDLE_PIN,
    BenchError,
    Benchmark,
    Outcome,
    Target,
    add_detserve_option,
    load_average,
    run_record,
    say,
    utc_stamp,
    write_result,
)
from benchstack import bench_profile, prepare_stack
from detserve import api
from detserve.errors import DetserveError
from detserve.keys import generate_key_pair

POLICIES = ("engine-core-with-worker-when-concurrent", "engine-core-with-worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", choices=POLICIES, default=POLICIES[0], help="(%(default)s)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per run (64)")
    parser.add_argument("--tokens", type=int, default=128, help="output tokens per prompt (128)")
    parser.add_argument("--rounds", type=int, default=40, help="paired rounds (40)")
    parser.add_argument("--concurrency", type=int, default=32, help="the high level (32)")
    parser.add_argument("--target", type=float, default=8.0, help="speed-up target (8)")
    parser.add_argument("--c1-target", type=float, default=0.97, help="vs unplaced (0.97)")
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="of the ratio's interval (0.95)"
    )
    parser.add_argument("--port", type=int, default=18040, help="placed port; unplaced is +1")
    add_detserve_option(parser)


def profile_with(folder: Path, name: str, port: int, policy: str | None) -> Path:
    path = bench_profile(name, port, folder / name)
    document = json.loads(path.read_text(encoding="utf-8"))
    document["runtime"]["cpu_placement"] = policy
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def median_interval(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """A distribution-free interval for the median, and its coverage: the order statistics
    ``x(k)`` and ``x(n-k+1)`` with the largest ``k`` whose coverage, ``1 - 2 P(B < k)`` for ``B``
    binomial (n, 1/2), is still at least ``confidence`` (the sign test's interval). With too few
    values for that, the whole range and the smaller coverage it has."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise BenchError("no rounds: no interval")

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


@contextlib.contextmanager
def thawed(client: docker.DockerClient, name: str) -> Iterator[None]:
    """The container ``name`` running for the body, and frozen (paused) after it."""
    container = client.containers.get(name)
    container.unpause()
    try:
        yield
    finally:
        container.pause()


class Bench:
    """The samples of one run of the benchmark, and where their files go."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder

    def sample(
        self, profile: Path, label: str, level: int, certificate: tuple[Path, Path]
    ) -> dict[str, Any]:
        log = self.folder / f"{label}.runlog.jsonl"
        summary = api.sample(
            profile,
            run_log=log,
            sidecar=self.folder / f"{label}.sidecar.json",
            n_prompts=self.args.prompts,
            max_tokens=self.args.tokens,
            concurrency=level,
            certificate=certificate[0] if level > 1 else None,
            certificate_key=certificate[1] if level > 1 else None,
            bundle=BUNDLE,
            bundle_pin=BUNDLE_PIN,
            force=True,
        )
        measured = {
            "tokens_per_s": summary.output_tokens / summary.seconds,
            "seconds": summary.seconds,
            "sha256": hashlib.sha256(log.read_bytes()).hexdigest(),
            "cpu_placement": summary.cpu_placement,
        }
        log.unlink()
        say(f"{label}: {measured['tokens_per_s']:8.1f} tokens/s")
        return measured

    def certify(self, profile: Path, label: str, keys: Any) -> tuple[Path, Path]:
        high = self.args.concurrency
        say(f"check {label}: tier 1, levels 1 and {high}, {self.args.prompts} x {self.args.tokens}")
        outcome = api.check(
            profile,
            output_dir=self.folder / f"check-{label}",
            tier=1,
            runs=2,
            concurrency=(1, high),
            n_prompts=self.args.prompts,
            max_tokens=self.args.tokens,
            bundle=BUNDLE,
            bundle_pin=BUNDLE_PIN,
            signing_key=keys.private_key,
        )
        if outcome.certificate is None:
            raise BenchError(f"{label}: no certificate: {outcome.result.diagnosis.reason}")
        return outcome.certificate, keys.public_key  # beside the trace it names


def run(args: argparse.Namespace) -> Outcome:
    prepare_stack(args.detserve, (args.port, args.port + 1))
    stamp = utc_stamp()
    record: dict[str, Any] = run_record("bench_placement", stamp, args)
    high = args.concurrency
    keys = ("placed_high", "placed_1", "unplaced_high", "unplaced_1")
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
    ratios: list[float] = []
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="bench-placement-") as temp:
        folder = Path(temp)
        bench = Bench(args, folder)
        profiles = {
            "placed": profile_with(folder, "bench-placed", args.port, args.policy),
            "unplaced": profile_with(folder, "bench-unplaced", args.port + 1, None),
        }
        names = {label: api.container_name(path) for label, path in profiles.items()}
        signing = generate_key_pair(folder / "keys")  # the certificates are signed, and verified
        certificates: dict[str, tuple[Path, Path]] = {}
        try:
            for label, profile in profiles.items():
                api.run(profile, on_stage=say)
                certificates[label] = bench.certify(profile, label, signing)
                client.containers.get(names[label]).pause()
            for index in range(args.rounds):
                order = ("placed", "unplaced") if index % 2 == 0 else ("unplaced", "placed")
                c1: dict[str, float] = {}
                for label in order:
                    profile, certificate = profiles[label], certificates[label]
                    with thawed(client, names[label]):
                        tag = f"round {index + 1} {label}"
                        runs[f"{label}_high"].append(
                            bench.sample(profile, f"{tag} c{high}", high, certificate)
                        )
                        measured = bench.sample(profile, f"{tag} c1", 1, certificate)
                        runs[f"{label}_1"].append(measured)
                        c1[label] = measured["tokens_per_s"]
                ratios.append(c1["placed"] / c1["unplaced"])
                say(f"round {index + 1}: placed c1 / unplaced c1 = {ratios[-1]:.3f}")
        except DetserveError as exc:
            raise BenchError(exc.diagnostics()) from exc
        except docker.errors.DockerException as exc:
            raise BenchError(f"the Docker engine: {exc}") from exc
        finally:
            for label, profile in profiles.items():
                with contextlib.suppress(docker.errors.DockerException):
                    client.containers.get(names[label]).unpause()
                try:
                    api.stop(profile)
                except DetserveError as exc:
                    say(f"could not stop {profile.name}: {exc.message}")
    medians = {key: statistics.median(r["tokens_per_s"] for r in runs[key]) for key in keys}
    ratio = statistics.median(ratios)
    low, high_bound, coverage = median_interval(ratios, args.confidence)
    speedup = medians["placed_high"] / medians["placed_1"]
    first = runs["unplaced_1"][0]["sha256"]
    identical = all(r["sha256"] == first for value in runs.values() for r in value)
    record.update(
        load_average_after=load_average(),
        runs=runs,
        tokens_per_s={key: round(value, 1) for key, value in medians.items()},
        paired_ratios=[round(r, 4) for r in ratios],
        placed_c1_over_unplaced_c1=round(ratio, 4),
        placed_c1_over_unplaced_c1_interval=[round(low, 4), round(high_bound, 4)],
        interval_coverage=round(coverage, 4),
        placed_c1_over_unplaced_c1_geometric_mean=round(statistics.geometric_mean(ratios), 4),
        placed_speedup=round(speedup, 2),
        unplaced_speedup=round(medians["unplaced_high"] / medians["unplaced_1"], 2),
        logs_identical=identical,
        run_log_sha256=first,
    )
    path = write_result("bench_placement", record, stamp=stamp)
    print(
        f"unplaced c1 {medians['unplaced_1']:.1f}  placed c1 {medians['placed_1']:.1f}  paired "
        f"ratio {ratio:.3f} [{low:.3f}, {high_bound:.3f}]  placed c{high} "
        f"{medians['placed_high']:.1f} ({speedup:.2f}x)  logs identical {identical}"
    )
    say(f"record: {path}")
    percent = round(100 * coverage, 1)
    return Outcome(
        record,
        path,
        (
            Target(
                "placed concurrency 1 over the unplaced server's, median paired ratio "
                "(higher is better)",
                round(ratio, 4),
                args.c1_target,
                ratio >= args.c1_target,
            ),
            Target(
                f"the same, lower bound of its {percent} % interval (higher is better)",
                round(low, 4),
                args.c1_target,
                low >= args.c1_target,
            ),
            Target(
                f"placed concurrency {high} over placed concurrency 1 (x, higher is better)",
                round(speedup, 2),
                args.target,
                speedup >= args.target,
            ),
            Target(
                "run logs byte-identical, placed or not (1 = yes)", float(identical), 1, identical
            ),
        ),
    )


BENCHMARK = Benchmark("bench_placement", __doc__, add_arguments, run)

if __name__ == "__main__":
    raise SystemExit(BENCHMARK.main())
