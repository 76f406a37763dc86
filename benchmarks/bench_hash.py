"""Is snapshot verification as fast as this machine allows? One command answers, warm and cold.

    .venv/bin/python benchmarks/bench_hash.py              # 4 GiB: 8 shards + 500 small files
    .venv/bin/python benchmarks/bench_hash.py --total-gib 1 --repeat 1   # a quick look
    .venv/bin/python benchmarks/bench_hash.py --shards 1   # one huge file: one core's speed

It writes a synthetic snapshot, then measures in the same run, with the page cache warm and then
cold (dropped before every cold measurement, then ``--settle-s`` untimed: see ``measure``):

* read: every file read once, sequentially, in 8 MiB chunks, discarded (what `cat` costs);
* sha256sum: coreutils over all files (its output must equal detserve's manifest, byte for byte);
* hashlib 1 thread: the same files, read and hashed by one thread (one core's hashing speed);
* hashlib pool: ``ThreadPoolExecutor(cores)`` mapping ``hashlib.file_digest`` over the files, in
  this process (no start-up): the strongest simple baseline;
* detserve hash and detserve verify: the CLI as a subprocess, start-up included, its progress
  bar drawn on a pseudo-terminal as a person would see it; verify's peak RSS (ru_maxrss).

Then, warm, a second snapshot of ``--many-files`` small files (20,000 of 4 KiB): the pool against
`detserve verify`, to price what each file costs.

Targets, on the medians of the runs: `detserve verify`'s whole wall time, start-up included, at
least 0.85 x the hashlib pool's throughput, warm and cold; on the many small files, at most 50 us
a file more than the pool. It exits 1 when one is missed, 2 on a bad option or a failed tool.
``min(read, cores x hashlib 1 thread)``, the machine's bound, and detserve's own ``--json``
seconds are reported beside. The table goes to stdout and the whole record to
``benchmarks/results/bench_hash-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import ssl
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    GIB,
    MIB,
    BenchError,
    Benchmark,
    Outcome,
    Target,
    add_detserve_option,
    add_results_option,
    add_workdir_options,
    cpu_info,
    first_line,
    load_average,
    machine_facts,
    run_child,
    say,
    utc_stamp,
    work_folder,
    write_result,
)

TARGET_FRACTION = 0.85
#: what a small file may cost `detserve verify` over the hashlib pool, start-up included
PER_FILE_TARGET_S = 50e-6
READ_CHUNK = 8 * MIB
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
#: seconds between a cache drop and a cold run (measure's docstring says why)
SETTLE_S = 8.0


# --- the synthetic snapshot ------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotSpec:
    total_bytes: int
    shards: int
    small_files: int
    small_bytes: int  # each small file

    @property
    def shard_bytes(self) -> int:
        return (self.total_bytes - self.small_files * self.small_bytes) // self.shards


def write_snapshot(root: Path, spec: SnapshotSpec) -> dict[str, int]:
    """Shards of random-looking bytes plus small files, laid out like a Hugging Face snapshot."""
    if spec.shard_bytes <= 0:
        raise BenchError("the small files alone exceed --total-gib; lower --small-files")
    root.mkdir(parents=True)
    block = os.urandom(16 * MIB)
    files: dict[str, int] = {}
    for shard in range(spec.shards):
        name = f"model-{shard + 1:05d}-of-{spec.shards:05d}.safetensors"
        with (root / name).open("wb") as out:
            left = spec.shard_bytes
            piece = 0
            while left:
                # A distinct prefix per piece, so no two pieces of the snapshot are equal.
                chunk = f"{shard}:{piece}:".encode() + block
                out.write(chunk[: min(left, len(block))])
                left -= min(left, len(block))
                piece += 1
        files[name] = spec.shard_bytes
    (root / "tokenizer").mkdir()
    for index in range(spec.small_files):
        name = f"tokenizer/part-{index:04d}.json"
        (root / name).write_bytes(os.urandom(spec.small_bytes))
        files[name] = spec.small_bytes
    os.sync()  # dirty pages cannot be dropped: flush them so "cold" is cold
    return files


# --- cache state -----------------------------------------------------------------------------


def drop_page_cache() -> None:
    os.sync()
    DROP_CACHES.write_text("1\n")


def can_drop_page_cache() -> str | None:
    """None when the page cache can be dropped here, else why not."""
    try:
        drop_page_cache()
    except OSError as exc:
        return f"cannot write {DROP_CACHES}: {exc.strerror} (needs root, outside a container)"
    return None


# --- the measurements ------------------------------------------------------------------------


def read_all(root: Path, paths: list[str]) -> None:
    buffer = bytearray(READ_CHUNK)
    for path in paths:
        with (root / path).open("rb", buffering=0) as file:
            while file.readinto(buffer):
                pass


def hashlib_pool(root: Path, paths: list[str], workers: int) -> dict[str, str]:
    """The strongest simple baseline: a thread pool mapping ``hashlib.file_digest``."""

    def one(path: str) -> str:
        with (root / path).open("rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(one, paths), strict=True))


def hashlib_one_thread(root: Path, paths: list[str]) -> dict[str, str]:
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    digests = {}
    for path in paths:
        digest = hashlib.sha256()
        with (root / path).open("rb", buffering=0) as file:
            while count := file.readinto(buffer):
                digest.update(view[:count])
        digests[path] = digest.hexdigest()
    return digests


# --- one benchmark run -----------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    seconds: float
    #: a child's peak RSS; 0 for what runs in this process
    max_rss_bytes: int = 0
    #: the seconds detserve itself reports in its --json output (start-up excluded); None otherwise
    own_seconds: float | None = None


@dataclass
class Tool:
    name: str
    run: Callable[[], Timing]
    seconds: list[float] = field(default_factory=list)
    max_rss_bytes: list[int] = field(default_factory=list)
    own_seconds: list[float] = field(default_factory=list)

    def rate(self, total_bytes: int) -> float:
        # The fastest of the runs: a slower one was slowed by something else on the machine
        # (timeit's reasoning). The same statistic for every tool keeps the ratios fair.
        return total_bytes / min(self.seconds)

    def median_rate(self, total_bytes: int) -> float:
        """Throughput of the median run: what the targets against the hashlib pool use."""
        return total_bytes / statistics.median(self.seconds)

    def own_rate(self, total_bytes: int) -> float:
        """detserve's throughput from its own report: listing, hashing, comparing; no start-up."""
        return total_bytes / min(self.own_seconds)

    def as_json(self, total_bytes: int) -> dict[str, object]:
        return {
            "seconds": [round(s, 4) for s in self.seconds],
            "best_seconds": round(min(self.seconds), 4),
            "median_seconds": round(statistics.median(self.seconds), 4),
            "bytes_per_s": round(self.rate(total_bytes)),
            "median_bytes_per_s": round(self.median_rate(total_bytes)),
            **({"max_rss_bytes": max(self.max_rss_bytes)} if self.max_rss_bytes else {}),
            **(
                {
                    "own_seconds": [round(s, 4) for s in self.own_seconds],
                    "own_bytes_per_s": round(self.own_rate(total_bytes)),
                }
                if self.own_seconds
                else {}
            ),
        }


def timed(action: Callable[[], object]) -> Callable[[], Timing]:
    """An action in this process, timed."""

    def run() -> Timing:
        started = time.perf_counter()
        action()
        return Timing(seconds=time.perf_counter() - started)

    return run


def in_child(argv: list[str], *, cwd: Path | None = None, tty: bool = True) -> Callable[[], Timing]:
    """A command, timed from launch to exit (start-up included), with its peak RSS and, for a
    detserve command run with ``--json``, the seconds it reports itself."""

    def run() -> Timing:
        child = run_child(argv, cwd=cwd, tty=tty)
        own = json.loads(child.stdout)["seconds"] if "--json" in argv else None
        return Timing(seconds=child.seconds, max_rss_bytes=child.max_rss_bytes, own_seconds=own)

    return run


def measure(tools: list[Tool], *, repeat: int, cold: bool, settle_s: float = 0.0) -> None:
    """Interleave the tools in each round, so that a slow moment of the machine hits all.

    Cold: the page cache is dropped before every run, then ``settle_s`` pass untimed. On this
    VM the memory a drop frees is handed back to the host within seconds (the balloon's free
    page reporting), and a read into memory not yet handed back is faster: started at once, the
    same pool took anywhere from 1.5 to 5.0 s on 4 GiB, in streaks, and whichever tool started
    first was favoured (its start-up is shorter). After the settling time every run starts from
    the same state (docs/performance.md, "The cold verify target").
    """
    for _ in range(repeat):
        for tool in tools:
            if cold:
                drop_page_cache()
                time.sleep(settle_s)
            child = tool.run()
            tool.seconds.append(child.seconds)
            if child.max_rss_bytes:
                tool.max_rss_bytes.append(child.max_rss_bytes)
            if child.own_seconds is not None:
                tool.own_seconds.append(child.own_seconds)


DETSERVE_TOOLS = ("detserve verify", "detserve hash")


@dataclass
class CacheState:
    """The tools measured in one cache state, the bound they imply and the verdict.

    detserve is judged on the throughput it reports itself (``--json``: listing, hashing and
    comparing every file), which is what a 470 GB snapshot sees; the CLI's whole wall time,
    interpreter start-up included, is reported beside it and weighs on a small snapshot only.
    """

    name: str
    tools: dict[str, Tool]
    total_bytes: int
    cores: int
    shards: int

    def rate(self, tool: str) -> float:
        return self.tools[tool].rate(self.total_bytes)

    def own_rate(self, tool: str) -> float:
        return self.tools[tool].own_rate(self.total_bytes)

    @property
    def stream_cap(self) -> float:
        """What fewer shards than cores allow: each file is one SHA-256 stream, on one core."""
        return min(self.rate("read"), min(self.cores, self.shards) * self.rate("hashlib 1 thread"))

    @property
    def cores_bound(self) -> float:
        return self.cores * self.rate("hashlib 1 thread")

    @property
    def bound(self) -> float:
        return min(self.rate("read"), self.cores_bound)

    @property
    def target(self) -> float:
        return TARGET_FRACTION * self.bound

    def pool_ratio(self, tool: str, pool: str = "hashlib pool") -> float:
        """The CLI's whole wall time as a throughput, over the hashlib pool's (medians)."""
        return self.tools[tool].median_rate(self.total_bytes) / self.tools[pool].median_rate(
            self.total_bytes
        )

    def misses(self) -> list[str]:
        ratio = self.pool_ratio("detserve verify")
        if ratio >= TARGET_FRACTION:
            return []
        return [
            f"detserve verify {self.name}: CLI wall {ratio:.3f} x the hashlib pool < "
            f"{TARGET_FRACTION}"
        ]

    def targets(self) -> list[Target]:
        return [
            Target(
                name=f"hash: detserve verify CLI wall / hashlib pool, {self.name} cache (at least)",
                measured=round(self.pool_ratio("detserve verify"), 3),
                target=TARGET_FRACTION,
                met=self.pool_ratio("detserve verify") >= TARGET_FRACTION,
            )
        ]

    def as_json(self) -> dict[str, object]:
        ratios = {
            f"{tool.split()[1]}_{kind}": round(rate / self.bound, 3)
            for tool in DETSERVE_TOOLS
            for kind, rate in (
                ("ratio_to_bound", self.own_rate(tool)),
                ("wall_ratio_to_bound", self.rate(tool)),
            )
        }
        return {
            "tools": {name: tool.as_json(self.total_bytes) for name, tool in self.tools.items()},
            "read_bytes_per_s": round(self.rate("read")),
            "cores_x_hashlib_bytes_per_s": round(self.cores_bound),
            "bound": "read" if self.rate("read") <= self.cores_bound else "cores x hashlib",
            "target_bytes_per_s": round(self.target),
            **ratios,
            "judged_on_pool": "median seconds: CLI wall time, start-up included, / hashlib pool",
            "verify_wall_ratio_to_pool": round(self.pool_ratio("detserve verify"), 3),
            "hash_wall_ratio_to_pool": round(self.pool_ratio("detserve hash"), 3),
            "verify_meets_target": self.pool_ratio("detserve verify") >= TARGET_FRACTION,
            "stream_cap_bytes_per_s": round(self.stream_cap),
            "verify_ratio_to_stream_cap": round(
                self.own_rate("detserve verify") / self.stream_cap, 3
            ),
        }


def hashing_facts() -> dict[str, object]:
    """The machine, and what hashes on it: SHA extensions, OpenSSL, coreutils."""
    return machine_facts() | {
        "sha_ni": " sha_ni" in cpu_info(),
        "openssl": ssl.OPENSSL_VERSION,
        "sha256sum": first_line(["sha256sum", "--version"]),
    }


def in_memory_hashlib_rate(threads: int = 1) -> float:
    """SHA-256 of a buffer already in memory on ``threads`` threads: the hash alone, no reading.

    With every core hashing this is what the cores really give together, which a VM's vCPUs
    (shared with other guests, or siblings of one physical core) can make well below ``cores x``
    one thread's speed.
    """
    data = memoryview(os.urandom(64 * MIB))
    rounds = 4

    def work() -> None:
        digest = hashlib.sha256()
        for _ in range(rounds):
            for offset in range(0, len(data), READ_CHUNK):
                digest.update(data[offset : offset + READ_CHUNK])

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * rounds * len(data) / (time.perf_counter() - started)


def table(states: list[CacheState]) -> str:
    header = f"{'GB/s (best of runs)':<28}" + "".join(f"{state.name:>10}" for state in states)
    lines = [header, "-" * len(header)]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"{label:<28}" + "".join(f"{cell:>10}" for cell in cells))

    for name in dict.fromkeys(name for state in states for name in state.tools):
        if name in DETSERVE_TOOLS:
            row(name, [f"{state.own_rate(name) / 1e9:.2f}" for state in states])
            row("  CLI wall, start-up incl.", [f"{state.rate(name) / 1e9:.2f}" for state in states])
        else:
            row(
                name[:27],
                [f"{s.rate(name) / 1e9:.2f}" if name in s.tools else "-" for s in states],
            )
    row("cores x hashlib 1 thread", [f"{state.cores_bound / 1e9:.2f}" for state in states])
    row(
        f"{TARGET_FRACTION} x min(read, cores x)", [f"{state.target / 1e9:.2f}" for state in states]
    )
    for tool in DETSERVE_TOOLS:
        row(
            f"{tool.split()[1]} own / min",
            [f"{state.own_rate(tool) / state.bound:.3f}" for state in states],
        )
    for tool in DETSERVE_TOOLS:
        row(
            f"{tool.split()[1]} wall / pool (median)",
            [f"{state.pool_ratio(tool):.3f}" for state in states],
        )
    if states[0].shards < states[0].cores:
        row("stream cap", [f"{state.stream_cap / 1e9:.2f}" for state in states])
        row(
            "verify / cap",
            [f"{state.own_rate('detserve verify') / state.stream_cap:.3f}" for state in states],
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--total-gib", type=float, default=4.0, help="snapshot size (4)")
    parser.add_argument("--shards", type=int, default=8, help="large files (8)")
    parser.add_argument("--small-files", type=int, default=500, help="small files (500)")
    parser.add_argument("--small-kib", type=int, default=16, help="size of each small file (16)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each tool per state (5)")
    parser.add_argument(
        "--many-files",
        type=int,
        default=20000,
        help="small files of the second snapshot (20000; 0: skip)",
    )
    parser.add_argument("--many-kib", type=int, default=4, help="size of each of them (4)")
    parser.add_argument("--workers", type=int, help="pass --workers to detserve")
    parser.add_argument("--no-cold", action="store_true", help="measure the warm cache only")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=SETTLE_S,
        help=f"cold: seconds between the cache drop and each run, untimed ({SETTLE_S:g}; 0: "
        "start at once, the state this VM's free page reporting makes erratic)",
    )
    add_workdir_options(parser, "synthetic snapshot")
    add_results_option(parser)
    add_detserve_option(parser)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.total_gib <= 0 or args.shards < 1 or args.small_files < 0 or args.repeat < 1:
        parser.error("sizes, --shards and --repeat must be positive")
    if args.settle_s < 0:
        parser.error("--settle-s must not be negative")
    if args.many_files < 0 or args.many_kib < 1:
        parser.error("--many-files must not be negative, --many-kib positive")


def run(args: argparse.Namespace) -> Outcome:
    spec = SnapshotSpec(
        total_bytes=int(args.total_gib * GIB),
        shards=args.shards,
        small_files=args.small_files,
        small_bytes=args.small_kib * 1024,
    )
    if shutil.which(args.detserve) is None:
        raise BenchError(f"detserve not found at {args.detserve}; run `make venv` first")
    with work_folder("detserve-bench-hash-", args) as work:
        return bench(args, spec, work)


def bench(args: argparse.Namespace, spec: SnapshotSpec, work: Path) -> Outcome:
    facts = hashing_facts()
    cores = len(os.sched_getaffinity(0))
    snapshot = work / "snapshot"
    manifest = work / "snapshot.sha256"
    say(
        f"writing {spec.total_bytes / GIB:.2f} GiB: {spec.shards} x "
        f"{spec.shard_bytes / MIB:.0f} MiB + {spec.small_files} x {spec.small_bytes} B "
        f"under {work}"
    )
    files = write_snapshot(snapshot, spec)
    total = sum(files.values())
    paths = sorted(files, key=lambda p: p.encode())
    workers = ["--workers", str(args.workers)] if args.workers else []
    hash_argv = [args.detserve, "hash", "--snapshot", str(snapshot)]
    hash_argv += ["--manifest-output", str(manifest)]
    hash_argv += ["--force", "--json", *workers]
    verify_argv = [args.detserve, "verify", "--snapshot", str(snapshot), "--manifest"]
    verify_argv += [str(manifest), "--json", *workers]

    # Correctness before speed: detserve's manifest must be what coreutils writes, byte for byte.
    run_child(hash_argv)
    coreutils = run_child(["sha256sum", *[f"./{p}" for p in paths]], cwd=snapshot, tty=False)
    if coreutils.stdout.encode() != manifest.read_bytes():
        raise BenchError("detserve hash and sha256sum disagree: not benchmarking a wrong result")
    reference = "".join(f"{d}  ./{p}\n" for p, d in hashlib_one_thread(snapshot, paths).items())
    if reference != coreutils.stdout:
        raise BenchError("hashlib and sha256sum disagree")
    startup = [run_child([args.detserve, "verify", "--help"]) for _ in range(3)]

    def tools() -> dict[str, Tool]:
        listed = [
            Tool("read", timed(lambda: read_all(snapshot, paths))),
            Tool("sha256sum", in_child(["sha256sum", *paths], cwd=snapshot, tty=False)),
            Tool("hashlib 1 thread", timed(lambda: hashlib_one_thread(snapshot, paths))),
            Tool("hashlib pool", timed(lambda: hashlib_pool(snapshot, paths, cores))),
            Tool("detserve hash", in_child(hash_argv)),
            Tool("detserve verify", in_child(verify_argv)),
        ]
        return {tool.name: tool for tool in listed}

    load_at_start = load_average()
    if load_at_start[0] >= 0.5:
        say(
            f"warning: load average {load_at_start}: the machine is busy and the figures will "
            "be low; measure when it is idle"
        )
    say(f"load average {load_at_start}; measuring warm")
    read_all(snapshot, paths)  # warm the cache
    states = [CacheState("warm", tools(), total, cores, spec.shards)]
    measure(list(states[0].tools.values()), repeat=args.repeat, cold=False)
    cold_missing = "--no-cold given" if args.no_cold else can_drop_page_cache()
    if cold_missing is None:
        say("measuring cold: page cache dropped before each run")
        states.append(CacheState("cold", tools(), total, cores, spec.shards))
        measure(
            list(states[1].tools.values()), repeat=args.repeat, cold=True, settle_s=args.settle_s
        )
    else:
        say(f"cold was NOT measured: {cold_missing}")

    many = measure_many_files(args, work, cores) if args.many_files else None
    stamp = utc_stamp()
    verify_rss = max(max(s.tools["detserve verify"].max_rss_bytes) for s in states)
    record = {
        "benchmark": "bench_hash",
        "timestamp": stamp,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": facts
        | {"load_average_at_start": load_at_start, "load_average_at_end": load_average()},
        "snapshot": {
            "total_bytes": total,
            "files": len(files),
            "shards": spec.shards,
            "shard_bytes": spec.shard_bytes,
            "small_files": spec.small_files,
            "small_file_bytes": spec.small_bytes,
        },
        "repeat": args.repeat,
        "statistic": "best of the runs (least disturbed); every run's seconds are kept",
        "detserve_workers": args.workers or "default",
        "target_fraction": TARGET_FRACTION,
        "in_memory_hashlib_1_thread_bytes_per_s": round(
            max(in_memory_hashlib_rate() for _ in range(3))
        ),
        "in_memory_hashlib_all_cores_bytes_per_s": round(
            max(in_memory_hashlib_rate(cores) for _ in range(3))
        ),
        "detserve_startup_seconds": round(min(s.seconds for s in startup), 4),
        "detserve_startup_max_rss_bytes": max(s.max_rss_bytes for s in startup),
        "detserve_verify_max_rss_bytes": verify_rss,
        "states": {state.name: state.as_json() for state in states},
        "cold_not_measured": cold_missing,
        "cold_settle_seconds": args.settle_s,
        "many_files": many,
    }
    out = write_result(BENCHMARK.name, record, stamp=stamp, folder=args.results)

    print(table(states))
    print(
        f"\n{total / 1e9:.2f} GB in {len(files)} files ({spec.shards} shards), {cores} cores, "
        f"load average {load_at_start} at start\n"
        f"in memory, no reading: hashlib 1 thread "
        f"{record['in_memory_hashlib_1_thread_bytes_per_s'] / 1e9:.2f} GB/s, {cores} threads "
        f"{record['in_memory_hashlib_all_cores_bytes_per_s'] / 1e9:.2f} GB/s\n"
        f"detserve start-up {record['detserve_startup_seconds']} s; peak RSS: "
        f"start-up {record['detserve_startup_max_rss_bytes'] / MIB:.0f} MiB, "
        f"verify {verify_rss / MIB:.0f} MiB"
    )
    if cold_missing is not None:
        print(f"cold was NOT measured: {cold_missing}")
    print(f"wrote {out}")
    found = [t for state in states for t in state.targets()]
    missed = [miss for state in states for miss in state.misses()]
    if many is not None:
        per_file = float(many["per_file_over_pool_seconds"])  # type: ignore[arg-type]
        print(
            f"{many['files']} files of {args.many_kib} KiB, warm, medians: hashlib pool "
            f"{many['pool_median_seconds']} s, detserve verify {many['verify_median_seconds']} s "
            f"(own {many['verify_own_median_seconds']} s): {per_file * 1e6:.1f} us a file over "
            f"the pool (target <= {PER_FILE_TARGET_S * 1e6:.0f})"
        )
        found.append(
            Target(
                name="hash: detserve verify per small file over the hashlib pool (s, at most)",
                measured=round(per_file, 7),
                target=PER_FILE_TARGET_S,
                met=per_file <= PER_FILE_TARGET_S,
            )
        )
        if per_file > PER_FILE_TARGET_S:
            missed.append(f"{per_file * 1e6:.1f} us a small file over the pool")
    outcome = Outcome(record, out, tuple(found))
    if missed:
        say("TARGET MISSED: " + "; ".join(missed))
    else:
        print(
            f"targets met ({', '.join(s.name for s in states)}): verify's CLI wall >= "
            f"{TARGET_FRACTION} x the hashlib pool; small files <= "
            f"{PER_FILE_TARGET_S * 1e6:.0f} us over the pool"
        )
    return outcome


def measure_many_files(args: argparse.Namespace, work: Path, cores: int) -> dict[str, object]:
    """A snapshot of many small files, warm: the pool against `detserve verify`, interleaved."""
    root = work / "many"
    (root / "files").mkdir(parents=True)
    size = args.many_kib * 1024
    for index in range(args.many_files):
        (root / "files" / f"f{index:06d}.bin").write_bytes(os.urandom(size))
    paths = sorted(f"files/f{index:06d}.bin" for index in range(args.many_files))
    manifest = work / "many.sha256"
    digests = hashlib_pool(root, paths, cores)
    manifest.write_text("".join(f"{digests[p]}  ./{p}\n" for p in paths))
    say(f"measuring {args.many_files} files of {size} B, warm")
    workers = ["--workers", str(args.workers)] if args.workers else []
    argv = [args.detserve, "verify", "--snapshot", str(root), "--manifest", str(manifest)]
    tools = {
        "hashlib pool": Tool("hashlib pool", timed(lambda: hashlib_pool(root, paths, cores))),
        "detserve verify": Tool("detserve verify", in_child([*argv, "--json", *workers])),
    }
    read_all(root, paths)
    measure(list(tools.values()), repeat=args.repeat, cold=False)
    pool = statistics.median(tools["hashlib pool"].seconds)
    verify = statistics.median(tools["detserve verify"].seconds)
    return {
        "files": args.many_files,
        "file_bytes": size,
        "pool_seconds": [round(x, 4) for x in tools["hashlib pool"].seconds],
        "verify_seconds": [round(x, 4) for x in tools["detserve verify"].seconds],
        "verify_own_seconds": [round(x, 4) for x in tools["detserve verify"].own_seconds],
        "pool_median_seconds": round(pool, 4),
        "verify_median_seconds": round(verify, 4),
        "verify_own_median_seconds": round(
            statistics.median(tools["detserve verify"].own_seconds), 4
        ),
        "per_file_over_pool_seconds": round((verify - pool) / args.many_files, 8),
        "statistic": "medians; verify is the CLI's wall time, start-up included",
    }


BENCHMARK = Benchmark("bench_hash", __doc__, add_arguments, run, check_arguments)

if __name__ == "__main__":
    sys.exit(BENCHMARK.main())
