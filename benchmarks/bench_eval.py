"""Is `detserve eval-determinism` fast and small enough on two 100,000-sample run logs?

    .venv/bin/python benchmarks/bench_eval.py                  # 100,000 samples, the target
    .venv/bin/python benchmarks/bench_eval.py --samples 20000  # a quick look

It writes a synthetic run log (32 prompt tokens and 48 output tokens a sample, with logprobs
drawn like a greedy model's: many within 1e-4 of 0, the rest spread over [-8, 0), all float32
values as vLLM returns them), a byte-identical copy of it, and a copy in which a few samples
diverge (one output token changed, and everything after it), then runs the CLI as a subprocess,
start-up included, on

* identical: the log and its copy (verdict identical, exit 0);
* divergent: the log and the diverging copy (verdict divergent, exit 1).

Each case reports wall time and the peak resident memory of the command and everything it
started, summed over processes and sampled every 10 ms, next to its own ru_maxrss. Targets:
under 10 s and 500 MB each. It exits 1 when a target is missed, 2 when a case gives the wrong
verdict. The table goes to stdout and the whole record to
``benchmarks/results/bench_eval-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchlib import (
    BenchError,
    Benchmark,
    Outcome,
    Target,
    add_results_option,
    add_workdir_options,
    record_head_when,
    run_child,
    say,
    utc_stamp,
    work_folder,
    write_result,
)
from detserve.canonical import canonical_bytes
from detserve.runlog import FORMAT_VERSION

TARGET_SECONDS = 10.0
TARGET_MB = 500.0
MB = 1e6


# --- synthetic logs ----------------------------------------------------------------------------


def _float32(value: float) -> float:
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def _logprob(rng: random.Random) -> float:
    # Greedy tokens of a small model: often near-certain (logprob within 1e-4 of 0, printed with
    # an exponent), otherwise anywhere down to -8.
    if rng.random() < 0.4:
        return _float32(-(10.0 ** rng.uniform(-8, -4)))
    return _float32(-rng.uniform(0, 8))


def header(n_samples: int, max_tokens: int) -> dict[str, object]:
    sha = hashlib.sha256
    return {
        "record": "header",
        "format": "detserve-run-log",
        "format_version": FORMAT_VERSION,
        "pins": {
            "model_id": "detserve/bench-model",
            "model_revision": "a" * 40,
            "manifest_sha256": sha(b"manifest").hexdigest(),
            "image": "localhost:5000/detserve/vllm@sha256:" + "b" * 64,
            "prompt_bundle_sha256": sha(b"bundle").hexdigest(),
            "vllm_version": "0.6.3",
            "engine_args": ["--seed", "0", "--max-model-len", "1024"],
            "served_model_name": "bench",
            "environment": {"HF_HOME": "/hf-home", "HF_HUB_OFFLINE": "1"},
            "entrypoint": None,
            "device": {"kind": "cpu", "gpus": 0},
        },
        "sampling": {
            "temperature": 0.0,
            "seed": 0,
            "max_tokens": max_tokens,
            "logprobs": 1,
        },
        "n_samples": n_samples,
    }


def sample(
    index: int, rng: random.Random, prompt_tokens: int, output_tokens: int
) -> dict[str, Any]:
    output = [rng.randrange(32000) for _ in range(output_tokens)]
    return {
        "record": "sample",
        "index": index,
        "prompt_id": f"bench-{index:06d}",
        "prompt_sha256": hashlib.sha256(f"prompt {index}".encode()).hexdigest(),
        "request_sha256": hashlib.sha256(f"request {index}".encode()).hexdigest(),
        "kind": "chat" if index % 2 else "completion",
        "constraint": "json_schema" if index % 3 == 0 else None,
        "constraint_sha256": hashlib.sha256(b"schema").hexdigest() if index % 3 == 0 else None,
        "constraint_satisfied": True if index % 3 == 0 else None,
        "prompt_token_ids": [rng.randrange(32000) for _ in range(prompt_tokens)],
        "output_token_ids": output,
        "text": " ".join(f"tok{t}" for t in output[:24]) + " — fin",
        "finish_reason": "length",
        "logprobs": [_logprob(rng) for _ in output],
    }


def write_logs(
    work: Path, n: int, prompt_tokens: int, output_tokens: int, diverging: list[int]
) -> tuple[Path, Path, Path]:
    """The log, a byte-identical copy, and a copy whose samples ``diverging`` diverge."""
    rng = random.Random(5)
    paths = (work / "a.runlog.jsonl", work / "a-copy.runlog.jsonl", work / "b.runlog.jsonl")
    first = canonical_bytes(header(n, output_tokens))
    with paths[0].open("wb") as out_a, paths[2].open("wb") as out_b:
        out_a.write(first)
        out_b.write(first)
        hash_a, hash_b = hashlib.sha256(), hashlib.sha256()
        changed = set(diverging)
        for index in range(n):
            record = sample(index, rng, prompt_tokens, output_tokens)
            line_a = canonical_bytes(record)
            line_b = line_a
            if index in changed:
                at = output_tokens // 2
                record["output_token_ids"][at:] = [7] * (output_tokens - at)
                record["logprobs"][at:] = [-1.5] * (output_tokens - at)
                record["text"] = record["text"][:20] + " diverged"
                line_b = canonical_bytes(record)
            out_a.write(line_a)
            out_b.write(line_b)
            hash_a.update(line_a)
            hash_b.update(line_b)
        for out, digest in ((out_a, hash_a), (out_b, hash_b)):
            footer = {
                "record": "footer",
                "n_samples": n,
                "header_sha256": hashlib.sha256(first).hexdigest(),
                "samples_sha256": digest.hexdigest(),
            }
            out.write(canonical_bytes(footer))
    shutil.copyfile(paths[0], paths[1])
    return paths


# --- measuring a command -----------------------------------------------------------------------


@dataclass
class Run:
    case: str
    exit_code: int
    verdict: str
    seconds: float
    peak_tree_mb: float
    ru_maxrss_mb: float
    user_s: float
    system_s: float

    @property
    def met(self) -> bool:
        return all(target.met for target in self.targets())

    def targets(self) -> list[Target]:
        return [
            Target(
                f"eval: {self.case}, wall time (s, under)",
                self.seconds,
                TARGET_SECONDS,
                self.seconds < TARGET_SECONDS,
            ),
            Target(
                f"eval: {self.case}, peak memory of the process tree (MB, under)",
                self.peak_tree_mb,
                TARGET_MB,
                self.peak_tree_mb < TARGET_MB,
            ),
        ]


def run_case(case: str, argv: list[str], report: Path) -> Run:
    # exit 0 (identical) and 1 (divergent) are verdicts; anything else is a failure to run
    child = run_child(argv, tty=False, ok_codes=(0, 1), tree_rss=True)
    verdict = json.loads(report.read_text())["verdict"] if report.exists() else "?"
    return Run(
        case=case,
        exit_code=child.exit_code,
        verdict=verdict,
        seconds=round(child.seconds, 3),
        peak_tree_mb=round(child.peak_tree_rss_bytes / MB, 1),
        ru_maxrss_mb=round(child.max_rss_bytes / MB, 1),
        user_s=round(child.user_seconds, 3),
        system_s=round(child.system_seconds, 3),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=100_000, help="samples a log (100000)")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="a sample's (32)")
    parser.add_argument("--output-tokens", type=int, default=48, help="a sample's (48)")
    parser.add_argument("--diverging", type=int, default=5, help="samples that diverge in B (5)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case (best is kept)")
    add_workdir_options(parser, "logs")
    add_results_option(parser)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if min(args.samples, args.prompt_tokens, args.output_tokens, args.repeat) < 1:
        parser.error("--samples, --prompt-tokens, --output-tokens and --repeat must be >= 1")
    if not 1 <= args.diverging <= args.samples:
        parser.error("--diverging must be between 1 and --samples")


def run(args: argparse.Namespace) -> Outcome:
    with work_folder("detserve-bench-eval-", args) as work:
        return bench(args, work)


def bench(args: argparse.Namespace, work: Path) -> Outcome:
    n = args.samples
    step = max(1, n // max(1, args.diverging))
    diverging = list(range(step // 2, n, step))[: args.diverging]
    started = time.perf_counter()
    log_a, copy_a, log_b = write_logs(work, n, args.prompt_tokens, args.output_tokens, diverging)
    size_mb = log_a.stat().st_size / MB
    say(
        f"wrote 3 logs of {n} samples ({size_mb:.1f} MB each) in "
        f"{time.perf_counter() - started:.1f} s under {work}"
    )
    command = [sys.executable, "-m", "detserve", "eval-determinism"]
    cases = {
        "identical": (copy_a, 0, "identical"),
        "divergent": (log_b, 1, "divergent"),
    }
    runs: list[Run] = []
    for case, (other, expected_code, expected_verdict) in cases.items():
        best: Run | None = None
        for _ in range(args.repeat):
            report = work / f"{case}.report.json"
            report.unlink(missing_ok=True)
            argv = [*command, "--run-a", str(log_a), "--run-b", str(other), "-o", str(report)]
            timed = run_case(case, argv, report)
            if (timed.exit_code, timed.verdict) != (expected_code, expected_verdict):
                raise BenchError(
                    f"{case}: expected exit {expected_code} ({expected_verdict}), got exit "
                    f"{timed.exit_code} ({timed.verdict})"
                )
            if case == "divergent":
                found = json.loads(report.read_text())["counts"]["divergent"]
                if found != len(diverging):
                    raise BenchError(
                        f"divergent: {found} divergent samples, expected {len(diverging)}"
                    )
            best = timed if best is None or timed.seconds < best.seconds else best
        assert best is not None
        runs.append(best)

    ok = all(r.met for r in runs)
    header_line = (
        f"{'case':<10} {'exit':>4} {'verdict':<10} {'wall s':>7} {'user s':>7} "
        f"{'peak MB':>8} {'maxrss MB':>9}  target"
    )
    print(f"eval-determinism on two logs of {n} samples ({size_mb:.1f} MB each)")
    print(header_line)
    for r in runs:
        print(
            f"{r.case:<10} {r.exit_code:>4} {r.verdict:<10} {r.seconds:>7.2f} {r.user_s:>7.2f} "
            f"{r.peak_tree_mb:>8.1f} {r.ru_maxrss_mb:>9.1f}  {'met' if r.met else 'MISSED'} "
            f"(< {TARGET_SECONDS:g} s, < {TARGET_MB:g} MB)"
        )
    record: dict[str, object] = record_head_when(BENCHMARK.name) | {
        "logs": {
            "samples": n,
            "prompt_tokens": args.prompt_tokens,
            "output_tokens": args.output_tokens,
            "bytes": log_a.stat().st_size,
            "diverging_samples": diverging,
        },
        "targets": {"seconds": TARGET_SECONDS, "peak_mb": TARGET_MB},
        "runs": [asdict(r) for r in runs],
        "ok": ok,
    }
    out = write_result(BENCHMARK.name, record, stamp=utc_stamp(), folder=args.results)
    say(f"wrote {out}")
    return Outcome(record, out, tuple(target for r in runs for target in r.targets()))


BENCHMARK = Benchmark("bench_eval", __doc__, add_arguments, run, check_arguments)

if __name__ == "__main__":
    sys.exit(BENCHMARK.main())
