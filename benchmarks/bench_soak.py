"""The gateway's re-verification over a long soak: its share of a core and of the disk, and how
soon it catches a change.

    .venv/bin/python benchmarks/bench_soak.py                        # 20 GiB, one hour
    .venv/bin/python benchmarks/bench_soak.py --total-gib 1 --duration 60   # a quick look
    .venv/bin/python benchmarks/bench_soak.py --files 20000 --file-kib 4 --duration 300

What ``detserve serve`` runs with its default settings, alone in this process so that its CPU
time is what is measured: the synthetic snapshot of bench_verify.py (Hugging Face layout), the
lifetime's full pass before serving (it writes the record), then for ``--duration`` seconds
:meth:`detserve.snapshot_watch.SnapshotWatch.check` every ``--interval`` seconds (the gateway's
``--reverify-interval``, default 2 s) at the default pace (``--reverify-rate``, 32 MiB/s): the
record checked, and every byte read again from the device (``O_DIRECT``). The share of a core is
the process's user and system CPU time over the soak's wall time (``getrusage``); the disk's is
the bytes the process read (``/proc/self/io``) over the wall time. The container's identity
checks (one engine ``inspect`` every 2 s) are not in it.

With ``--files N``, the snapshot is another shape: N files of ``--file-kib`` KiB each, in the
same layout, a hundred to a directory (``data/d000/f00000.bin``): what costs is then the number
of files, not the bytes (a check of the record is O(files); the paced pass opens every file),
and the watch holds both to its share of a core by their measured CPU time
(:mod:`detserve.watch_share`), spacing the record's checks beyond the interval.

After the soak, a byte is changed through the file system with its mtime set back (only ctime
shows it), and the checks go on until one fails: the time from the change to the failure is
the detection time, whose bound is what the watch states at the change
(``SnapshotWatch.record_bound_s``: one interval, or the spacing its measured cost needs) plus a
check (the gateway fails at once on a record that no longer holds, whatever the snapshot's
size).

Targets: at most ``--cpu-target`` (5 %) of one core, and the change caught within the stated
bound and one second. Exit 0 met, 1 missed, 2 could not run. The record goes to
``benchmarks/results/bench_soak-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from bench_verify import (
    REVISION,
    SyntheticSnapshot,
    change_only_ctime_shows,
    settle_past_the_margin,
    state_directory,
    write_hf_snapshot,
)
from benchlib import (
    GIB,
    MIB,
    BenchError,
    Benchmark,
    Outcome,
    Target,
    add_workdir_options,
    load_average,
    run_record,
    say,
    utc_stamp,
    work_folder,
    write_result,
)
from detserve.api import DEFAULT_REVERIFY_INTERVAL_S
from detserve.errors import DetserveError
from detserve.snapshot_state import Lifetime, PinnedManifest, verify_in_lifetime
from detserve.snapshot_watch import DEFAULT_BYTES_PER_S, SnapshotWatch


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_bytes() -> int:
    """Bytes this process had the storage layer fetch (``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise BenchError("/proc/self/io has no read_bytes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--total-gib", type=float, default=20.0, help="snapshot size (20)")
    parser.add_argument("--shards", type=int, default=5, help="weight files (5)")
    parser.add_argument("--duration", type=float, default=3600.0, help="soak seconds (3600)")
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_REVERIFY_INTERVAL_S,
        help=f"seconds between checks ({DEFAULT_REVERIFY_INTERVAL_S:g}, serve's default)",
    )
    parser.add_argument(
        "--rate-mib",
        type=float,
        default=DEFAULT_BYTES_PER_S / MIB,
        help=f"paced pass, MiB/s ({DEFAULT_BYTES_PER_S / MIB:g}, serve's default)",
    )
    parser.add_argument(
        "--files", type=int, default=0, help="N small files instead of shards (0: shards)"
    )
    parser.add_argument("--file-kib", type=int, default=4, help="each small file's KiB (4)")
    parser.add_argument("--cpu-target", type=float, default=0.05, help="share of a core (0.05)")
    add_workdir_options(parser, "synthetic snapshot")
    parser.set_defaults(workdir=Path("/var/tmp"))


def write_many_files(root: Path, count: int, size: int) -> SyntheticSnapshot:
    """``count`` files of ``size`` bytes in the Hugging Face layout, a hundred to a directory,
    each a blob of its own (a distinct prefix) reached through a link; and the manifest."""
    model = root / "hub" / "models--bench--many-files"
    blobs, snapshot = model / "blobs", model / "snapshots" / REVISION
    blobs.mkdir(parents=True)
    filler = os.urandom(size)
    digests: dict[str, str] = {}
    files: dict[str, int] = {}
    for index in range(count):
        name = f"data/d{index // 100:03d}/f{index:05d}.bin"
        data = (f"{index}:".encode() + filler)[:size]
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blobs / digest, link.parent))
        digests[name], files[name] = digest, size
    manifest = root / "manifest.sha256"
    lines = [f"{digests[name]}  ./{name}\n" for name in sorted(digests, key=os.fsencode)]
    manifest.write_text("".join(lines), encoding="utf-8")
    os.sync()
    return SyntheticSnapshot(snapshot=snapshot, manifest=manifest, files=files)


def soak(watch: SnapshotWatch, duration: float, interval: float) -> list[float]:
    """Check every ``interval`` seconds for ``duration``; the seconds each check took."""
    took: list[float] = []
    started = time.monotonic()
    due = started + interval
    while due - started <= duration:
        time.sleep(max(0.0, due - time.monotonic()))
        began = time.perf_counter()
        watch.check()
        took.append(time.perf_counter() - began)
        due += interval
    return took


def detect(watch: SnapshotWatch, interval: float, limit_s: float) -> float | None:
    """Checks every ``interval`` until one fails; seconds from now to the failure, or None."""
    started = time.monotonic()
    due = started + interval
    while time.monotonic() - started < limit_s:
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            watch.check()
        except DetserveError:
            return time.monotonic() - started
        due += interval
    return None


def run(args: argparse.Namespace) -> Outcome:
    stamp = utc_stamp()
    rate = round(args.rate_mib * MIB)
    record: dict[str, Any] = run_record("bench_soak", stamp, args, bytes_per_s=rate)
    with work_folder("bench-soak-", args) as work, state_directory(work):
        if args.files:
            say(f"writing {args.files} files of {args.file_kib} KiB under {work}")
            synthetic = write_many_files(work / "hf-cache", args.files, args.file_kib * 1024)
        else:
            say(f"writing a {args.total_gib:g} GiB snapshot in {args.shards} shards under {work}")
            synthetic = write_hf_snapshot(work / "hf-cache", int(args.total_gib * GIB), args.shards)
        record["snapshot_files"] = len(synthetic.files)
        record["snapshot_bytes"] = synthetic.total_bytes
        settle_past_the_margin()
        lifetime = Lifetime(
            container_id=hashlib.sha256(stamp.encode()).hexdigest(),
            started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            restart_count=0,
        )
        manifest = PinnedManifest.read(synthetic.manifest)
        first = verify_in_lifetime(synthetic.snapshot, manifest, lifetime)  # serve's pre-flight
        if "record written" not in (first.record or ""):
            raise BenchError(f"the pre-flight wrote no record: {first.record}")
        watch = SnapshotWatch(
            synthetic.snapshot,
            synthetic.manifest,
            manifest.sha256,
            lifetime,
            bytes_per_s=rate,
            interval_s=args.interval,
        )
        say(
            f"soak: {args.duration:g} s, a check every {args.interval:g} s, {args.rate_mib:g} MiB/s"
        )
        cpu_before, io_before, wall_before = cpu_seconds(), read_bytes(), time.monotonic()
        took = soak(watch, args.duration, args.interval)
        wall = time.monotonic() - wall_before
        cpu = cpu_seconds() - cpu_before
        disk = read_bytes() - io_before
        paced = watch.paced
        assert paced is not None
        record.update(
            soak_wall_s=round(wall, 1),
            cpu_s=round(cpu, 2),
            cpu_share_of_one_core=round(cpu / wall, 4),
            disk_read_bytes=disk,
            disk_read_mb_per_s=round(disk / wall / 1e6, 2),
            checks=len(took),
            check_s_median=round(statistics.median(took), 4),
            check_s_max=round(max(took), 4),
            paced_bytes_read=paced.bytes_read,
            paced_passes_completed=paced.passes,
            paced_pass_s=round(watch.pass_seconds or 0.0, 1),
            paced_reads_direct=paced.direct,
            record_checks=watch.record_checks,
            watch_cpu_share=watch.share.share,
            record_cpu_s=round(watch.share.record_cpu_total_s, 2),
            record_check_cpu_s_last=round(watch.share.record_cpu_s, 4),
            paced_cpu_s=round(watch.share.paced_cpu_total_s, 2),
            record_bound_s=watch.record_bound_s,
            paced_pass_s_stated=round(watch.pass_seconds or 0.0, 1),
            paced_pass_s_last=None if watch.last_pass_s is None else round(watch.last_pass_s, 1),
        )
        say(
            f"CPU {cpu:.1f} s over {wall:.0f} s: {100 * cpu / wall:.2f} % of one core; "
            f"disk {disk / wall / 1e6:.1f} MB/s; {paced.passes} paced passes; "
            f"{watch.record_checks} checks of the record, each caught within "
            f"{watch.record_bound_s} s"
        )
        bound = (watch.record_bound_s or args.interval) + 1.0  # stated at the change, and a check
        record["change_bound_s"] = bound
        change_only_ctime_shows(synthetic)
        caught_after = detect(watch, args.interval, limit_s=2 * bound + 60)
        record["change_caught_after_s"] = None if caught_after is None else round(caught_after, 3)
        say(f"a byte changed with its mtime set back: caught after {caught_after} s")
        watch.close()
    record["load_average_after"] = load_average()
    path = write_result("bench_soak", record, stamp=stamp)
    say(f"record: {path}")
    share = record["cpu_share_of_one_core"]
    caught = caught_after is not None and caught_after <= bound
    return Outcome(
        record,
        path,
        (
            Target(
                "verification's share of one core over the soak (lower is better)",
                share,
                args.cpu_target,
                share <= args.cpu_target,
            ),
            Target(
                "a byte changed, mtime set back: caught after (s, lower is better)",
                caught_after if caught_after is not None else float("inf"),
                bound,
                caught,
            ),
        ),
    )


BENCHMARK = Benchmark("bench_soak", __doc__, add_arguments, run)

if __name__ == "__main__":
    raise SystemExit(BENCHMARK.main())
