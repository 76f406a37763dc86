"""CPU placement chosen per workload: concurrency 1 as fast as the unplaced server, 32 at 8x.

    .venv/bin/python benchmarks/bench_placement.py                  # 5 rounds, 64 x 128 tokens
    .venv/bin/python benchmarks/bench_placement.py --rounds 1 --prompts 16 --tokens 16
    .venv/bin/python benchmarks/bench_placement.py --policy engine-core-with-worker   # the toll

Two profiles of the tiny CPU container (configs/tiny-cpu.local.json copied as bench_runtime.py
does): ``bench-placed`` with ``runtime.cpu_placement`` = ``--policy`` (default
``engine-core-with-worker-when-concurrent``) on port 18040, and ``bench-unplaced`` with none on
18041. One container runs at a time (two vLLM CPU engines would share the two cores), so each
round starts and stops both in turn:

1. ``bench-placed``: ``detserve run``; ``sample --concurrency 32 --certificate
   --certificate-key`` (the policy places the processes first); then ``sample --concurrency 1``
   (the policy releases them: the hard case, one request after a placed run); stop;
2. ``bench-unplaced``: ``detserve run``; ``sample --concurrency 1``; stop.

The certificate comes from one ``detserve check`` at tier 1 (2 runs, levels 1 and 32) on
``bench-placed`` before the first round, signed with a key made for the run. Throughput is each
sample's own ``sampling_seconds``. Every run log must be byte-identical to the first: placement
decides where, never what.

Targets (medians over rounds): placed concurrency 1 at least ``--c1-target`` (0.97) of the
unplaced server's, and placed concurrency 32 at least ``--target`` (8) times placed
concurrency 1. Exit 0 met, 1 missed, 2 could not run. The containers are removed at the end; the
record goes to ``benchmarks/results/bench_placement-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

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
    parser.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    parser.add_argument("--concurrency", type=int, default=32, help="the high level (32)")
    parser.add_argument("--target", type=float, default=8.0, help="speed-up target (8)")
    parser.add_argument("--c1-target", type=float, default=0.97, help="vs unplaced (0.97)")
    parser.add_argument("--port", type=int, default=18040, help="placed port; unplaced is +1")
    add_detserve_option(parser)


def profile_with(folder: Path, name: str, port: int, policy: str | None) -> Path:
    path = bench_profile(name, port, folder / name)
    document = json.loads(path.read_text(encoding="utf-8"))
    document["runtime"]["cpu_placement"] = policy
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def sample(
    profile: Path,
    out: Path,
    label: str,
    level: int,
    certificate: tuple[Path, Path] | None,
    args: Any,
) -> dict[str, Any]:
    log = out / f"{label}.runlog.jsonl"
    summary = api.sample(
        profile,
        run_log=log,
        sidecar=out / f"{label}.sidecar.json",
        n_prompts=args.prompts,
        max_tokens=args.tokens,
        concurrency=level,
        certificate=certificate[0] if certificate is not None and level > 1 else None,
        certificate_key=certificate[1] if certificate is not None and level > 1 else None,
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
    say(f"{label}: {measured['tokens_per_s']:8.1f} tokens/s")
    return measured


def run(args: argparse.Namespace) -> Outcome:
    prepare_stack(args.detserve, (args.port, args.port + 1))
    stamp = utc_stamp()
    record: dict[str, Any] = run_record("bench_placement", stamp, args)
    high = args.concurrency
    runs: dict[str, list[dict[str, Any]]] = {"placed_high": [], "placed_1": [], "unplaced_1": []}
    with tempfile.TemporaryDirectory(prefix="bench-placement-") as temp:
        folder = Path(temp)
        placed = profile_with(folder, "bench-placed", args.port, args.policy)
        unplaced = profile_with(folder, "bench-unplaced", args.port + 1, None)
        try:
            say(f"check: tier 1, levels 1 and {high}, {args.prompts} x {args.tokens}")
            api.run(placed, on_stage=say)
            keys = generate_key_pair(folder / "keys")  # the certificate is signed, and verified
            outcome = api.check(
                placed,
                output_dir=folder / "check",
                tier=1,
                runs=2,
                concurrency=(1, high),
                n_prompts=args.prompts,
                max_tokens=args.tokens,
                bundle=BUNDLE,
                bundle_pin=BUNDLE_PIN,
                signing_key=keys.private_key,
            )
            record["check_verdict"] = outcome.verdict
            if outcome.certificate is None:
                raise BenchError(f"no certificate: {outcome.result.diagnosis.reason}")
            certificate = (outcome.certificate, keys.public_key)  # beside the trace it names
            for index in range(args.rounds):
                round_ = f"round {index + 1}"
                api.run(placed, on_stage=say)
                runs["placed_high"].append(
                    sample(placed, folder, f"{round_} placed c{high}", high, certificate, args)
                )
                runs["placed_1"].append(
                    sample(placed, folder, f"{round_} placed c1", 1, None, args)
                )
                api.stop(placed)
                api.run(unplaced, on_stage=say)
                runs["unplaced_1"].append(
                    sample(unplaced, folder, f"{round_} unplaced c1", 1, None, args)
                )
                api.stop(unplaced)
        except DetserveError as exc:
            raise BenchError(exc.diagnostics()) from exc
        finally:
            for profile in (placed, unplaced):
                try:
                    api.stop(profile)
                except DetserveError as exc:
                    say(f"could not stop {profile.name}: {exc.message}")
    medians = {
        key: statistics.median(r["tokens_per_s"] for r in value) for key, value in runs.items()
    }
    c1_ratio = medians["placed_1"] / medians["unplaced_1"]
    speedup = medians["placed_high"] / medians["placed_1"]
    first = runs["unplaced_1"][0]["sha256"]
    identical = all(r["sha256"] == first for value in runs.values() for r in value)
    record.update(
        load_average_after=load_average(),
        runs=runs,
        tokens_per_s={key: round(value, 1) for key, value in medians.items()},
        placed_c1_over_unplaced_c1=round(c1_ratio, 4),
        placed_speedup=round(speedup, 2),
        logs_identical=identical,
        run_log_sha256=first,
    )
    path = write_result("bench_placement", record, stamp=stamp)
    print(
        f"unplaced c1 {medians['unplaced_1']:.1f}  placed c1 {medians['placed_1']:.1f} "
        f"({c1_ratio:.3f})  placed c{high} {medians['placed_high']:.1f} ({speedup:.2f}x)  "
        f"logs identical {identical}"
    )
    say(f"record: {path}")
    return Outcome(
        record,
        path,
        (
            Target(
                "placed concurrency 1 over the unplaced server's (higher is better)",
                round(c1_ratio, 4),
                args.c1_target,
                c1_ratio >= args.c1_target,
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
