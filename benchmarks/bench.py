"""The performance benchmarks in one command: hashing, eval-determinism, download, time to ready,
sampling.

    .venv/bin/python benchmarks/bench.py all            # every part, with its defaults
    .venv/bin/python benchmarks/bench.py all --hash-args='--total-gib 1 --repeat 1' \\
        --eval-args='--samples 20000' --runtime-args='--rounds 4 --ready-rounds 1'
    .venv/bin/python benchmarks/bench.py hash --shards 1       # one benchmark, its own options
    .venv/bin/python benchmarks/bench.py runtime --help        # what they are

``hash``, ``eval``, ``cli``, ``download``, ``verify``, ``soak``, ``runtime``, ``concurrency``,
``gateway``, ``gateway-hostile`` and ``placement`` run one benchmark (``bench_hash.py``,
``bench_eval.py``, ``bench_cli.py``, ``bench_download.py``, ``bench_verify.py``,
``bench_soak.py``, ``bench_runtime.py``, ``bench_concurrency.py``, ``bench_gateway.py``,
``bench_gateway_hostile.py``, ``bench_placement.py``) with that script's options, as the script
itself would; it writes its own record to ``benchmarks/results/<script>-<timestamp>.json``.

``all`` runs them in that order (runtime and after last: they start containers, and the CPU
they take must not disturb the others), each with its defaults unless ``--NAME-args`` gives it
options (write them with ``=``: ``--hash-args='--shards 1'``). The soak's default is one hour.
Each still writes its own record; then ``benchmarks/results/bench-<timestamp>.json`` holds the
machine, each part's options, exit status and whole record (or why it could not run), and
``targets``: every target of every part, as ``name``, ``measured``, ``target``, ``met``. A part
that cannot run does not stop the others.

The runtime part needs the stack (`make stack`: dockerd, the local registry, the vLLM CPU
image); `make bench`, `make bench-runtime` and `make bench-gateway` start it first. Exit status:
0 when every target is met, 1 when one is missed, 2 when a benchmark could not run or an option
is wrong.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import bench_cli
import bench_concurrency
import bench_download
import bench_eval
import bench_gateway
import bench_gateway_hostile
import bench_hash
import bench_placement
import bench_runtime
import bench_soak
import bench_verify
from benchlib import (
    RESULTS,
    BenchError,
    Benchmark,
    Target,
    load_average,
    machine_facts,
    parser_from_doc,
    say,
    summary,
    utc_stamp,
    write_result,
)

#: the parts, in the order ``all`` runs them
PARTS: dict[str, Benchmark] = {
    "hash": bench_hash.BENCHMARK,
    "eval": bench_eval.BENCHMARK,
    "cli": bench_cli.BENCHMARK,
    "download": bench_download.BENCHMARK,
    "verify": bench_verify.BENCHMARK,
    "soak": bench_soak.BENCHMARK,
    "runtime": bench_runtime.BENCHMARK,
    "concurrency": bench_concurrency.BENCHMARK,
    "gateway": bench_gateway.BENCHMARK,
    "gateway-hostile": bench_gateway_hostile.BENCHMARK,
    "placement": bench_placement.BENCHMARK,
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each part's subparser (for checking its options together)."""
    parser = parser_from_doc(__doc__)
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    subparsers = {
        name: benchmark.setup(
            commands.add_parser(
                name,
                help=summary(benchmark.doc),
                description=benchmark.doc,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )
        for name, benchmark in PARTS.items()
    }
    every = commands.add_parser(
        "all",
        help="every part in one run, and one record of all their targets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name in PARTS:
        every.add_argument(
            f"--{name}-args",
            default="",
            metavar="OPTIONS",
            help=f"options for {name}, as one word: --{name}-args='...' (its defaults)",
        )
    every.add_argument("--results", type=Path, default=RESULTS, help="where the combined JSON goes")
    return parser, subparsers


def run_all(args: argparse.Namespace) -> int:
    # Every part's options are checked before anything runs: a typo in the last part's options
    # must not surface after the first part has run for minutes.
    options = {name: shlex.split(getattr(args, f"{name.replace('-', '_')}_args")) for name in PARTS}
    parsed = {
        name: benchmark.parse(options[name], prog=f"bench.py all --{name}-args")
        for name, benchmark in PARTS.items()
    }
    started = utc_stamp()
    load_at_start = load_average()
    parts: dict[str, dict[str, object]] = {}
    targets: list[Target] = []
    errors: list[str] = []
    for name, benchmark in PARTS.items():
        say(f"== bench {name}: {benchmark.name}.py {shlex.join(options[name])}".rstrip())
        part: dict[str, object] = {"script": f"{benchmark.name}.py", "options": options[name]}
        try:
            outcome = benchmark.run(parsed[name])
        except BenchError as exc:
            say(f"{benchmark.name}: error: {exc}")
            errors.append(name)
            part |= {"exit_code": 2, "error": str(exc)}
        else:
            targets += outcome.targets
            part |= {
                "exit_code": outcome.exit_code,
                "path": str(outcome.path),
                "record": outcome.record,
            }
        parts[name] = part
    missed = [target for target in targets if not target.met]
    code = 2 if errors else 1 if missed else 0
    record: dict[str, object] = {
        "benchmark": "bench",
        "timestamp": started,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_facts()
        | {"load_average_at_start": load_at_start, "load_average_at_end": load_average()},
        "parts": parts,
        "targets": [target.as_json() for target in targets],
        "could_not_run": errors,
        "exit_code": code,
    }
    path = write_result("bench", record, stamp=started, folder=args.results)

    width = max((len(target.name) for target in targets), default=6)
    print(f"\n{'target':<{width}} {'measured':>12} {'target':>12}  met")
    for target in targets:
        print(
            f"{target.name:<{width}} {target.measured:>12.4g} {target.target:>12.4g}  "
            f"{'met' if target.met else 'MISSED'}"
        )
    for name in errors:
        first = (str(parts[name]["error"]).splitlines() or [""])[0]
        print(f"{name}: could not run: {first}")
    print(f"wrote {path}")
    if missed:
        print(f"TARGET MISSED: {len(missed)} of {len(targets)}")
    if errors:
        print(f"NOT MEASURED: {', '.join(errors)} could not run")
    if code == 0:
        print(f"every target met ({len(targets)})")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    subcommand: str = args.subcommand
    if subcommand == "all":
        return run_all(args)
    # What is left is exactly what the part's own script would have parsed.
    del args.subcommand
    benchmark = PARTS[subcommand]
    benchmark.check(subparsers[subcommand], args)
    return benchmark.execute(args)


if __name__ == "__main__":
    sys.exit(main())
