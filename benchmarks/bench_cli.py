"""How long does a short detserve command take? hyperfine, against a bare interpreter, one run.

    .venv/bin/python benchmarks/bench_cli.py                # 20 runs of each, 3 warm-ups
    .venv/bin/python benchmarks/bench_cli.py --runs 50

CI runs many short commands, so start-up is most of detserve's time there. hyperfine (Debian's
package, installed with apt-get when missing and this runs as root; otherwise exit 2) times, in
one run and without a shell (``-N``):

* ``python -c pass``: this interpreter (the one detserve runs on) starting and exiting, the floor;
* ``detserve --version``, ``detserve --help``;
* ``detserve verify --config configs/tiny-cpu.json``: the committed tiny model (6 files, 1.7 MB),
  a real verification whose time is nearly all start-up.

Targets, on the median: --version <= 0.15 s, --help <= 0.35 s, verify <= 0.35 s. It exits 0 when
every one is met, 1 when one is missed, 2 when it could not run. The table goes to stdout and the
whole record (hyperfine's own JSON included) to ``benchmarks/results/bench_cli-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import (
    REPO,
    BenchError,
    Benchmark,
    Outcome,
    Target,
    add_detserve_option,
    add_results_option,
    first_line,
    load_average,
    machine_facts,
    say,
    utc_stamp,
    write_result,
)

#: (label, arguments after the detserve executable, target median seconds)
COMMANDS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("detserve --version", ("--version",), 0.15),
    ("detserve --help", ("--help",), 0.35),
    (
        "detserve verify --config configs/tiny-cpu.json",
        ("verify", "--config", "configs/tiny-cpu.json"),
        0.35,
    ),
)


def hyperfine() -> str:
    """The hyperfine executable, installed from Debian's package when missing (needs root)."""
    found = shutil.which("hyperfine")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError(
            "hyperfine is not installed and cannot be installed here (needs root and apt-get): "
            "apt-get install -y hyperfine"
        )
    say("hyperfine missing: apt-get install -y hyperfine")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "hyperfine"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}".rstrip())
    found = shutil.which("hyperfine")
    if not found:
        raise BenchError("apt-get installed hyperfine, yet it is not on PATH")
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each command (20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (3)")
    add_results_option(parser)
    add_detserve_option(parser)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.runs < 2 or args.warmup < 0:
        parser.error("--runs must be at least 2 and --warmup not negative")


def run(args: argparse.Namespace) -> Outcome:
    if shutil.which(args.detserve) is None:
        raise BenchError(f"detserve not found at {args.detserve}; run `make venv` first")
    tool = hyperfine()
    floor = f"{Path(sys.executable).name} -c pass"
    argvs = {floor: [sys.executable, "-c", "pass"]}
    argvs |= {label: [args.detserve, *rest] for label, rest, _ in COMMANDS}
    load_at_start = load_average()
    if load_at_start[0] >= 0.5:
        say(f"warning: load average {load_at_start}: the machine is busy; figures will be high")
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as folder:
        export = Path(folder) / "hyperfine.json"
        argv = [tool, "-N", "--style", "basic", "--warmup", str(args.warmup)]
        argv += ["--runs", str(args.runs), "--export-json", str(export)]
        for label, command in argvs.items():
            argv += ["--command-name", label, " ".join(command)]
        say(f"hyperfine: {len(argvs)} commands, {args.runs} runs each (cwd {REPO})")
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"hyperfine failed:\n{done.stdout}{done.stderr}".rstrip())
        measured = json.loads(export.read_text())
    results = {entry["command"]: entry for entry in measured["results"]}
    medians = {label: results[label]["median"] for label in argvs}
    targets = tuple(
        Target(
            name=f"cli: {label}, median (s, at most)",
            measured=round(medians[label], 4),
            target=limit,
            met=medians[label] <= limit,
        )
        for label, _, limit in COMMANDS
    )
    stamp = utc_stamp()
    record = {
        "benchmark": "bench_cli",
        "timestamp": stamp,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_facts()
        | {"load_average_at_start": load_at_start, "load_average_at_end": load_average()},
        "hyperfine": first_line([tool, "--version"]),
        "runs": args.runs,
        "warmup": args.warmup,
        "statistic": "median of the runs",
        "median_seconds": {label: round(value, 4) for label, value in medians.items()},
        "over_bare_interpreter_seconds": {
            label: round(value - medians[floor], 4) for label, value in medians.items()
        },
        "targets": [target.as_json() for target in targets],
        "hyperfine_results": measured["results"],
    }
    out = write_result(BENCHMARK.name, record, stamp=stamp, folder=args.results)
    width = max(len(label) for label in argvs)
    print(f"{'command':<{width}} {'median s':>9} {'min s':>7} {'max s':>7} {'target':>7}")
    limits = {label: limit for label, _, limit in COMMANDS}
    for label in argvs:
        entry = results[label]
        limit = f"{limits[label]:.2f}" if label in limits else ""
        print(
            f"{label:<{width}} {entry['median']:>9.4f} {entry['min']:>7.4f} {entry['max']:>7.4f} "
            f"{limit:>7}"
        )
    print(f"load average {load_at_start} at start, {load_average()} at end\nwrote {out}")
    outcome = Outcome(record, out, targets)
    missed = [t for t in targets if not t.met]
    if missed:
        say("TARGET MISSED: " + "; ".join(f"{t.name}: {t.measured} s" for t in missed))
    else:
        print(f"every target met ({len(targets)})")
    return outcome


BENCHMARK = Benchmark("bench_cli", __doc__, add_arguments, run, check_arguments)

if __name__ == "__main__":
    sys.exit(BENCHMARK.main())
