"""Which settings of the hashing loop matter here? Measure each one, warm and cold.

    .venv/bin/python benchmarks/study_hash.py --total-gib 2

The knobs of ``detserve.hashing`` are measured one at a time against the shipped defaults, in
this process (no CLI start-up, which ``bench_hash.py`` measures), over a synthetic snapshot like
``bench_hash.py``'s: chunk size (1, 4, 8, 16 MiB), worker count (1, cores, cores + 1), the
kernel read-ahead advice (none, SEQUENTIAL, SEQUENTIAL + WILLNEED on the next chunk),
``os.readv`` against ``file.readinto``, and the cost of the progress bar (rich, drawn on a
pseudo-terminal, advanced on every chunk or every 64 MiB). Variants of the read loop that
``hash_files`` does not offer are written out here, the same loop with one thing changed.
The table goes to stdout, the record to ``benchmarks/results/study_hash-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from bench_hash import (
    SnapshotSpec,
    can_drop_page_cache,
    drop_page_cache,
    hashing_facts,
    read_all,
    write_snapshot,
)
from benchlib import (
    GIB,
    MIB,
    Benchmark,
    Outcome,
    add_results_option,
    add_workdir_options,
    load_average,
    pseudo_terminal,
    say,
    utc_stamp,
    work_folder,
    write_result,
)
from detserve.cli.output import byte_columns
from detserve.hashing import DEFAULT_CHUNK_SIZE, default_workers, hash_files

Progressed = Callable[[int], None]


def variant_hash(
    root: Path,
    paths: list[str],
    *,
    workers: int,
    chunk: int,
    read: str = "readv",
    advice: str = "sequential",
    progress: Progressed | None = None,
    report_every: int = 0,
) -> None:
    """hash_files' loop with one knob changed: how it reads, what it tells the kernel."""
    local = threading.local()

    def one(path: str) -> str:
        if not hasattr(local, "view"):
            local.view = memoryview(bytearray(chunk))
        view = local.view
        digest = hashlib.sha256()
        fd = os.open(root / path, os.O_RDONLY)
        file = os.fdopen(fd, "rb", buffering=0, closefd=True)
        pending = 0
        offset = 0
        try:
            if advice != "none":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while True:
                if advice == "willneed":
                    os.posix_fadvise(fd, offset + chunk, chunk, os.POSIX_FADV_WILLNEED)
                count = os.readv(fd, [view]) if read == "readv" else file.readinto(view)
                if not count:
                    break
                offset += count
                digest.update(view[:count])
                if progress is not None:
                    pending += count
                    if pending >= report_every:
                        progress(pending)
                        pending = 0
            if progress is not None and pending:
                progress(pending)
        finally:
            file.close()
        return digest.hexdigest()

    ordered = sorted(paths, key=lambda p: -(root / p).stat().st_size)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, ordered))


def discard(_: bytes) -> None:
    """The bar's output: drawn as on a person's terminal, and then dropped."""


@contextmanager
def rich_bar() -> Iterator[Progressed]:
    """detserve's byte progress bar, drawn on a pseudo-terminal as a person would see it."""
    with (
        pseudo_terminal(discard) as follower,
        open(follower, "w", closefd=False) as tty,  # the pty closes it
        Progress(
            *byte_columns(),
            console=Console(file=tty, force_terminal=True, width=120),
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("verifying", total=None)
        yield lambda count: progress.advance(task, count)


def variants(
    root: Path, paths: list[str], cores: int, workers_list: list[int]
) -> dict[str, Callable[[], object]]:
    shipped = DEFAULT_CHUNK_SIZE
    out: dict[str, Callable[[], object]] = {}
    for mib in (1, 4, 8, 16):
        out[f"chunk {mib} MiB"] = functools.partial(
            hash_files, root, paths, workers=cores, chunk_size=mib * MIB
        )
    for workers in workers_list or sorted({1, cores, cores + 1}):
        out[f"workers {workers}"] = functools.partial(
            hash_files, root, paths, workers=workers, chunk_size=shipped
        )
    for advice in ("none", "sequential", "willneed"):
        out[f"advice {advice}"] = functools.partial(
            variant_hash, root, paths, workers=cores, chunk=shipped, advice=advice
        )
    for read in ("readv", "readinto"):
        out[f"read {read}"] = functools.partial(
            variant_hash, root, paths, workers=cores, chunk=shipped, read=read
        )

    def with_bar(every: int) -> Callable[[], object]:
        def run() -> None:
            with rich_bar() as advance:
                variant_hash(
                    root, paths, workers=cores, chunk=shipped, progress=advance, report_every=every
                )

        return run

    out["progress none"] = lambda: variant_hash(root, paths, workers=cores, chunk=shipped)
    out["progress every chunk"] = with_bar(0)
    out["progress every 64 MiB"] = with_bar(64 * MIB)
    out["progress 1 MiB chunks, each"] = lambda: _small_chunks_bar(root, paths, cores, 0)
    out["progress 1 MiB chunks, 64 MiB"] = lambda: _small_chunks_bar(root, paths, cores, 64 * MIB)
    return out


def _small_chunks_bar(root: Path, paths: list[str], cores: int, every: int) -> None:
    # Small chunks are where a per-chunk callback costs most: 8 x the calls of 8 MiB chunks.
    with rich_bar() as advance:
        variant_hash(root, paths, workers=cores, chunk=MIB, progress=advance, report_every=every)


def worker_counts(text: str) -> tuple[int, ...]:
    """``1,2,4``: the worker counts to try."""
    try:
        counts = tuple(int(n) for n in text.split(",") if n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"worker counts must be >= 1: {text!r}")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--total-gib", type=float, default=2.0, help="snapshot size (2)")
    parser.add_argument("--shards", type=int, default=8, help="large files (8)")
    parser.add_argument("--small-files", type=int, default=500, help="small files (500)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (3)")
    parser.add_argument("--no-cold", action="store_true", help="measure the warm cache only")
    parser.add_argument("--only", help="run the variants whose name contains this")
    parser.add_argument(
        "--workers-list",
        type=worker_counts,
        default=(),
        help="worker counts to try, e.g. 1,2,4,8 (1,cores,cores+1)",
    )
    add_workdir_options(parser, "synthetic snapshot")
    add_results_option(parser)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.total_gib <= 0 or args.shards < 1 or args.small_files < 0 or args.repeat < 1:
        parser.error("sizes, --shards and --repeat must be positive")


def run(args: argparse.Namespace) -> Outcome:
    spec = SnapshotSpec(int(args.total_gib * GIB), args.shards, args.small_files, 16 * 1024)
    with work_folder("detserve-study-hash-", args) as work:
        return study(args, spec, work)


def study(args: argparse.Namespace, spec: SnapshotSpec, work: Path) -> Outcome:
    root = work / "snapshot"
    files = write_snapshot(root, spec)
    total = sum(files.values())
    paths = sorted(files)
    cores = default_workers()
    runs = {
        name: variant
        for name, variant in variants(root, paths, cores, list(args.workers_list)).items()
        if not args.only or args.only in name
    }
    load_at_start = load_average()
    cold_missing = "--no-cold given" if args.no_cold else can_drop_page_cache()
    states = ["warm"] if cold_missing else ["warm", "cold"]
    seconds: dict[str, dict[str, list[float]]] = {s: {n: [] for n in runs} for s in states}
    for state in states:
        say(f"{state}: load average {load_average()}")
        if state == "warm":
            read_all(root, paths)
        for _ in range(args.repeat):
            for name, variant in runs.items():  # interleaved: a slow moment hits every variant
                if state == "cold":
                    drop_page_cache()
                started = time.perf_counter()
                variant()
                seconds[state][name].append(time.perf_counter() - started)
    rates = {
        state: {name: total / min(s) for name, s in by_name.items()}
        for state, by_name in seconds.items()
    }
    print(f"{'GB/s (best of ' + str(args.repeat) + ')':<32}" + "".join(f"{s:>8}" for s in states))
    for name in runs:
        print(f"{name:<32}" + "".join(f"{rates[s][name] / 1e9:8.2f}" for s in states))
    if cold_missing:
        print(f"cold was NOT measured: {cold_missing}")
    stamp = utc_stamp()
    record: dict[str, object] = {
        "benchmark": BENCHMARK.name,
        "timestamp": stamp,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": hashing_facts()
        | {"load_average_at_start": load_at_start, "load_average_at_end": load_average()},
        "snapshot": {"total_bytes": total, "files": len(files), "shards": spec.shards},
        "workers_default": cores,
        "seconds": seconds,
        "bytes_per_s": {s: {n: round(r) for n, r in by.items()} for s, by in rates.items()},
        "cold_not_measured": cold_missing,
    }
    out = write_result(BENCHMARK.name, record, stamp=stamp, folder=args.results)
    print(f"load average {load_at_start} at start; wrote {out}")
    return Outcome(record, out)  # a study: no target


BENCHMARK = Benchmark("study_hash", __doc__, add_arguments, run, check_arguments)

if __name__ == "__main__":
    sys.exit(BENCHMARK.main())
