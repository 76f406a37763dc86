"""Certified concurrency: output tokens/s of strict sampling at 1, 2, 4, 8, 16 and 32 in flight.

    .venv/bin/python benchmarks/bench_concurrency.py                  # 64 prompts x 128 tokens
    .venv/bin/python benchmarks/bench_concurrency.py --rounds 1 --tokens 32   # a quicker look

On the tiny CPU container under a profile of its own (configs/tiny-cpu.local.json copied with
the name ``bench-concurrency`` and port 18010, as bench_runtime.py does), in one run:

1. ``detserve run`` (start, wait with verification, smoke);
2. ``detserve check`` at tier 1 with 2 runs at every level (and shuffled orders): the
   certificate, signed with a key made for the run, or, when the engine is not invariant here,
   the verdict and exit 1;
3. ``detserve sample --concurrency N --certificate --certificate-key`` for every level (each
   run verifies the certificate's signature and its trace before sampling), ``--rounds`` times, the
   level order reversed every other round; each run log is compared byte for byte with the
   concurrency-1 log. Throughput is the sampler's own ``sampling_seconds`` (its sidecar's: the
   two snapshot verifications and start-up excluded), median over rounds.

Targets: every log byte-identical to concurrency 1, and the best level at least ``--target``
(8) times the concurrency-1 throughput. Exit 0 met, 1 missed, 2 could not run. The container is
removed at the end. The record goes to ``benchmarks/results/bench_concurrency-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchlib import (
    BUNDLE,
    BUNDLE_PIN,
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
from detserve import api
from detserve.keys import generate_key_pair

LEVELS = (1, 2, 4, 8, 16, 32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=int, default=64, help="prompts per run (64)")
    parser.add_argument("--tokens", type=int, default=128, help="output tokens per prompt (128)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per level (3)")
    parser.add_argument("--target", type=float, default=8.0, help="speed-up target (8)")
    add_server_options(parser, name="bench-concurrency", port=18010)


def _sample(
    profile: Path, out: Path, level: int, certificate: Path, key: Path, args: Any
) -> dict[str, Any]:
    log = out / f"c{level}.runlog.jsonl"
    summary = api.sample(
        profile,
        run_log=log,
        sidecar=out / f"c{level}.sidecar.json",
        n_prompts=args.prompts,
        max_tokens=args.tokens,
        concurrency=level,
        certificate=certificate if level > 1 else None,
        certificate_key=key if level > 1 else None,
        bundle=BUNDLE,
        bundle_pin=BUNDLE_PIN,
        force=True,
    )
    return {
        "seconds": summary.seconds,
        "tokens": summary.output_tokens,
        "sha256": hashlib.sha256(log.read_bytes()).hexdigest(),
    }


def run(args: argparse.Namespace) -> Outcome:
    prepare_stack(args.detserve, (args.port,))
    stamp = utc_stamp()
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as temp:
        folder = Path(temp)
        profile = bench_profile(args.name, args.port, folder)
        with served(profile, args.name, args.port, keep=args.keep):
            say(f"check: tier 1, 2 runs at {LEVELS}, {args.prompts} x {args.tokens}")
            keys = generate_key_pair(folder / "keys")  # the certificate is signed, and verified
            outcome = api.check(
                profile,
                output_dir=folder / "check",
                tier=1,
                runs=2,
                concurrency=LEVELS,
                n_prompts=args.prompts,
                max_tokens=args.tokens,
                bundle=BUNDLE,
                bundle_pin=BUNDLE_PIN,
                signing_key=keys.private_key,
            )
            say(f"check verdict: {outcome.verdict} ({outcome.result.diagnosis.reason})")
            record: dict[str, Any] = record_head(
                "bench_concurrency",
                stamp,
                load_average_before=load_average(),
                prompts=args.prompts,
                tokens=args.tokens,
                rounds=args.rounds,
                check_verdict=outcome.verdict,
                check_passes=outcome.pack.report["volatile"],
            )
            if outcome.certificate is None:
                path = write_result("bench_concurrency", record, stamp=stamp)
                return Outcome(record, path, (Target("check passes (1 = yes)", 0, 1, False),))
            certificate = outcome.certificate  # beside the trace it names
            runs: dict[int, list[dict[str, Any]]] = {level: [] for level in LEVELS}
            for round_ in range(args.rounds):
                order = LEVELS if round_ % 2 == 0 else tuple(reversed(LEVELS))
                for level in order:
                    runs[level].append(
                        _sample(profile, folder, level, certificate, keys.public_key, args)
                    )
                    last = runs[level][-1]
                    say(
                        f"round {round_ + 1} concurrency {level:>2}: "
                        f"{last['tokens'] / last['seconds']:8.1f} tokens/s"
                    )
    baseline_sha = runs[1][0]["sha256"]
    curve = {
        level: statistics.median(r["tokens"] / r["seconds"] for r in runs[level])
        for level in LEVELS
    }
    identical = all(r["sha256"] == baseline_sha for level in LEVELS for r in runs[level])
    best = max(curve[level] / curve[1] for level in LEVELS)
    record.update(
        load_average_after=load_average(),
        runs={str(level): runs[level] for level in LEVELS},
        tokens_per_s={str(level): round(curve[level], 1) for level in LEVELS},
        speedup={str(level): round(curve[level] / curve[1], 2) for level in LEVELS},
        logs_identical=identical,
        run_log_sha256=baseline_sha,
    )
    print("concurrency  tokens/s  speed-up  log = concurrency 1")
    for level in LEVELS:
        same = all(r["sha256"] == baseline_sha for r in runs[level])
        print(f"{level:>11}  {curve[level]:8.1f}  {curve[level] / curve[1]:7.2f}x  {same}")
    path = write_result("bench_concurrency", record, stamp=stamp)
    say(f"record: {path}")
    return Outcome(
        record,
        path,
        (
            Target(
                "run logs byte-identical to concurrency 1 (1 = yes)", float(identical), 1, identical
            ),
            Target(
                "best speed-up over concurrency 1 (x, higher is better)",
                round(best, 2),
                args.target,
                best >= args.target,
            ),
        ),
    )


BENCHMARK = Benchmark("bench_concurrency", __doc__, add_arguments, run)

if __name__ == "__main__":
    raise SystemExit(BENCHMARK.main())
