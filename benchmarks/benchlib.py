"""What the benchmarks share: options, the machine, timing a child process, writing the record.

The scripts here are run as ``.venv/bin/python benchmarks/<name>.py``, which puts this folder first
on ``sys.path``: ``import benchlib`` needs nothing installed. Each script describes itself as a
``Benchmark`` (its options, and a ``run`` that returns an ``Outcome``: its record, where the record
was written, its targets), so that it runs alone and under ``benchmarks/bench.py`` alike.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import pty
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
#: the committed reference prompts and their pin, which the runtime benchmarks sample
BUNDLE = REPO / "artifacts" / "reference_prompts"
BUNDLE_PIN = REPO / "manifests" / "reference_prompts" / "reference_prompts.sha256"
MIB = 1024**2
GIB = 1024**3
#: how much of a child's stderr is kept, for the error message when it fails
STDERR_TAIL_BYTES = 8192
#: a marker is searched in what arrived plus this much before it, so a split read still finds it
MARKER_OVERLAP_BYTES = 256
#: Spawns a command, waits for it and writes what it cost to the file named first. A child's
#: ru_maxrss starts at its spawner's resident size (exec keeps the spawner's high-water mark), so
#: a command spawned straight from a benchmark holding buffers and imports reads as large as the
#: benchmark. This bare interpreter (-I -S, about 8 MB) spawns it instead, and times it itself,
#: so that its own start-up is not counted.
_SPAWNER = """\
import os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
launched, began = time.time(), time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - began
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as out:
    out.write(f"{code} {launched!r} {seconds!r} {usage.ru_utime!r} {usage.ru_stime!r} ")
    out.write(f"{usage.ru_maxrss}")
sys.exit(code if code >= 0 else 128 - code)
"""


class BenchError(Exception):
    """A benchmark that could not run (a bad option, a tool that failed, disagreeing results).

    Exit 2: no verdict, neither met nor missed.
    """


# --- options -----------------------------------------------------------------------------------


def parser_from_doc(doc: str | None, *, prog: str | None = None) -> argparse.ArgumentParser:
    """A parser whose help is the module's docstring, laid out as written (it has examples)."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def summary(doc: str | None) -> str:
    """The first line of a docstring."""
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def add_results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")


def add_detserve_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detserve",
        default=str(Path(sys.executable).with_name("detserve")),
        help="the detserve executable (the one next to this Python)",
    )


def add_workdir_options(parser: argparse.ArgumentParser, kept: str) -> None:
    """--workdir and --keep, for what ``work_folder`` makes; ``kept`` names what it holds."""
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where to write (/tmp)"
    )
    parser.add_argument("--keep", action="store_true", help=f"keep the {kept}")


@contextlib.contextmanager
def work_folder(prefix: str, args: argparse.Namespace) -> Iterator[Path]:
    """A new folder under ``args.workdir``, removed at the end unless ``args.keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=args.workdir))
    try:
        yield work
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# --- targets, outcomes and the benchmark itself ------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One target of a benchmark. The name says the unit and which way is better."""

    name: str
    measured: float
    target: float
    met: bool

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Outcome:
    """What one benchmark run measured: its record, the file it went to, and its targets."""

    record: dict[str, object]
    path: Path
    targets: tuple[Target, ...] = ()

    @property
    def exit_code(self) -> int:
        """0 when every target is met (or there is none), 1 when one is missed."""
        return 0 if all(target.met for target in self.targets) else 1


@dataclass(frozen=True)
class Benchmark:
    """A benchmark script: its options and how it runs, so that ``bench.py`` can run it too."""

    #: the script's name: ``bench_hash`` writes ``results/bench_hash-<timestamp>.json``
    name: str
    #: the module docstring: the help text
    doc: str | None
    add_arguments: Callable[[argparse.ArgumentParser], None]
    #: raises BenchError when it cannot run; the targets it returns decide 0 or 1
    run: Callable[[argparse.Namespace], Outcome]
    #: checks the parsed options together, calling ``parser.error`` on a bad one
    check_arguments: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None

    def setup(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        self.add_arguments(parser)
        return parser

    def check(self, parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        if self.check_arguments is not None:
            self.check_arguments(parser, args)

    def parse(self, argv: Sequence[str] | None, *, prog: str | None = None) -> argparse.Namespace:
        parser = self.setup(parser_from_doc(self.doc, prog=prog))
        args = parser.parse_args(argv)
        self.check(parser, args)
        return args

    def execute(self, args: argparse.Namespace) -> int:
        """Run, and map the outcome to the exit status: 0 met, 1 missed, 2 could not run."""
        try:
            return self.run(args).exit_code
        except BenchError as exc:
            print(f"{self.name}: error: {exc}", file=sys.stderr)
            return 2

    def main(self, argv: Sequence[str] | None = None) -> int:
        return self.execute(self.parse(argv))


# --- the machine -------------------------------------------------------------------------------


def first_line(argv: Sequence[str]) -> str:
    """The first line a command prints on stdout, or ``unknown``."""
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    return out.splitlines()[0] if out.strip() else "unknown"


def cpu_info() -> str:
    """/proc/cpuinfo, or nothing where it cannot be read."""
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text()
    return ""


def machine_facts() -> dict[str, object]:
    """What every record says of the machine it was measured on."""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpu_info().splitlines() if "model name" in line),
        "unknown",
    )
    return {
        # the cores this process may run on (affinity, cgroup cpusets), not the host's
        "cores": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def say(message: str) -> None:
    """A progress line for people, on stderr (the table and the verdict go to stdout)."""
    print(message, file=sys.stderr, flush=True)


# --- child processes ---------------------------------------------------------------------------


@contextlib.contextmanager
def pseudo_terminal(on_output: Callable[[bytes], None]) -> Iterator[int]:
    """A pty, 120 x 40, whose output is drained in the background into ``on_output``.

    A child's stderr on it makes rich draw its live display as a person would see it, at the
    cost a person's terminal would impose. Yields the follower's descriptor.
    """
    leader, follower = pty.openpty()
    # a pty starts at 0 x 0, which makes rich fall back to a guess
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))

    def drain() -> None:
        with contextlib.suppress(OSError):  # EIO once the child and we have closed it
            while data := os.read(leader, 65536):
                on_output(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield follower
    finally:
        os.close(follower)
        reader.join(timeout=5)
        os.close(leader)


class StderrWatch:
    """Keeps the tail of a child's stderr and when each marker text first appeared in it."""

    def __init__(self, markers: dict[str, str]) -> None:
        self.markers = {key: text.encode() for key, text in markers.items()}
        self.tail = bytearray()
        #: epoch seconds at which each marker was first read
        self.found: dict[str, float] = {}

    def feed(self, data: bytes) -> None:
        now = time.time()
        start = max(0, len(self.tail) - MARKER_OVERLAP_BYTES)
        self.tail.extend(data)
        for key, text in self.markers.items():
            if key not in self.found and text in self.tail[start:]:
                self.found[key] = now
        del self.tail[:-STDERR_TAIL_BYTES]


def tree_rss_bytes(root: int, *, include_root: bool = True) -> int:
    """Resident memory of ``root`` (unless not ``include_root``) and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parent, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        pid = int(entry.name)
        children.setdefault(parent, []).append(pid)
        rss[pid] = pages * page
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0) if include_root or pid != root else 0
        stack.extend(children.get(pid, []))
    return total


class TreeRssSampler:
    """The peak of ``tree_rss_bytes(pid)``, sampled in the background while the block runs.

    ru_maxrss is one process's peak; this sums every process the command started, at the cost
    of missing a peak shorter than the sampling interval.
    """

    def __init__(self, pid: int, *, include_root: bool = True, every_s: float = 0.01) -> None:
        self.pid = pid
        self.include_root = include_root
        self.every_s = every_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            tree = tree_rss_bytes(self.pid, include_root=self.include_root)
            self.peak_bytes = max(self.peak_bytes, tree)
            self._stop.wait(self.every_s)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class ChildRun:
    """What one child process did and what it cost."""

    argv: tuple[str, ...]
    exit_code: int
    #: wall-clock time (epoch seconds) just before the child was started
    launched: float
    #: launch to exit, start-up included
    seconds: float
    user_seconds: float
    system_seconds: float
    #: the command's own peak resident memory (ru_maxrss; never below the spawner's ~8 MB)
    max_rss_bytes: int
    stdout: str
    #: the last STDERR_TAIL_BYTES of its stderr
    stderr_tail: str
    #: for each marker, seconds after launch when it first appeared on the child's stderr
    marks: dict[str, float] = field(default_factory=dict)
    #: the peak of the child and all it started (``tree_rss=True``), else 0
    peak_tree_rss_bytes: int = 0

    @property
    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the child itself."""
        return self.user_seconds + self.system_seconds


def run_child(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    tty: bool = True,
    markers: dict[str, str] | None = None,
    ok_codes: tuple[int, ...] = (0,),
    tree_rss: bool = False,
) -> ChildRun:
    """Run a command to the end: wall and CPU time (start-up included), peak RSS, its output.

    stdout is kept whole; stderr goes to a pseudo-terminal (``tty``: rich draws its live display
    there, as a person would see it) or to a file, and its tail is kept. ``markers`` (with a
    tty) time when each text first appears on stderr. An exit status not in ``ok_codes`` raises
    BenchError with the output. The command is spawned and timed by ``_SPAWNER``, so that its
    peak RSS is its own and not this process's.
    """
    if markers and not tty:
        raise ValueError("markers are timed as stderr arrives, which needs tty=True")
    watch = StderrWatch(markers or {})
    with (
        tempfile.TemporaryDirectory(prefix="benchlib-") as folder,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        report = Path(folder) / "cost"
        spawner = [sys.executable, "-I", "-S", "-c", _SPAWNER, str(report), *argv]
        terminal: contextlib.AbstractContextManager[int] = (
            pseudo_terminal(watch.feed) if tty else contextlib.nullcontext(err.fileno())
        )
        with terminal as stderr, contextlib.ExitStack() as sampling:
            spawned = subprocess.Popen(
                spawner, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=stderr
            )
            sampler = (
                sampling.enter_context(TreeRssSampler(spawned.pid, include_root=False))
                if tree_rss
                else None
            )
            spawned.wait()
        out.seek(0)
        stdout = out.read().decode(errors="replace")
        if not tty:
            err.seek(0)
            watch.feed(err.read())
        cost = report.read_text().split() if report.exists() else []
    tail = watch.tail.decode(errors="replace")
    if not cost:  # the command could not be started: the spawner's traceback says why
        raise BenchError(f"could not run {' '.join(argv)}:\n{tail}".rstrip())
    code, launched, seconds, user, system = int(cost[0]), *map(float, cost[1:5])
    if code not in ok_codes:
        raise BenchError(f"{' '.join(argv)} exited {code}:\n{stdout}{tail}".rstrip())
    return ChildRun(
        argv=tuple(argv),
        exit_code=code,
        launched=launched,
        seconds=seconds,
        user_seconds=user,
        system_seconds=system,
        max_rss_bytes=int(cost[5]) * 1024,  # Linux reports ru_maxrss in KiB
        stdout=stdout,
        stderr_tail=tail,
        marks={key: at - launched for key, at in watch.found.items()},
        peak_tree_rss_bytes=sampler.peak_bytes if sampler is not None else 0,
    )


# --- the record --------------------------------------------------------------------------------


def utc_stamp(when: float | None = None) -> str:
    """``20261123T091336Z``: the UTC time in a record's file name."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


def record_head(name: str, stamp: str, **more: object) -> dict[str, Any]:
    """The fields a record begins with: the benchmark, its stamp, the machine, then ``more``."""
    return {"benchmark": name, "stamp": stamp, "machine": machine_facts(), **more}


def run_record(name: str, stamp: str, args: argparse.Namespace, **more: object) -> dict[str, Any]:
    """:func:`record_head` with the load before the run and every option, as text."""
    return record_head(
        name,
        stamp,
        load_average_before=load_average(),
        options={k: str(v) for k, v in vars(args).items()},
        **more,
    )


def record_head_when(name: str) -> dict[str, object]:
    """The fields a child-timing record begins with: the local time, the machine and its load."""
    return {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_facts()
        | {"platform": platform.platform(), "load_average": load_average()},
    }


def write_result(
    name: str, record: dict[str, object], *, stamp: str, folder: Path = RESULTS
) -> Path:
    """Write ``folder/<name>-<stamp>.json`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
