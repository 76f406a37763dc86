"""Is `detserve download` as fast as huggingface_hub's own snapshot_download, and small?

    .venv/bin/python benchmarks/bench_download.py                 # 1 GiB: 4 shards, 3 rounds
    .venv/bin/python benchmarks/bench_download.py --total-gib 0.25 --rounds 1   # a quick look

It makes a synthetic model (``--shards`` safetensors shards of ``--total-gib`` in all, an index,
a config, a tokenizer, and a README.md that vLLM does not load), commits it to a git repository
as the hub stores it (the shards as git LFS objects), serves it with olah, a real Hugging Face
hub server, offline on loopback (scripts/stack/olah_hub.py), and writes the profile and the
manifest of that commit. Then, ``--rounds`` times, alternately, each into an empty cache:

* snapshot_download: ``huggingface_hub.snapshot_download`` alone, in a fresh interpreter, at the
  same commit with the same patterns (so the same files), its progress bars on the terminal;
* detserve download: the CLI as a subprocess, start-up included, its progress display drawn on a
  pseudo-terminal as a person would see it; it also verifies every byte against the manifest.

Targets: the median wall time of `detserve download` at most 1.5 x snapshot_download's; its
peak memory (the larger of its ru_maxrss and the sampled peak of the process and its children)
under 200 MB in every round; its progress display (the "downloading" bar and a throughput in
B/s) seen on the terminal in every round. Both must fetch exactly the same files, byte for byte:
otherwise it exits 2. It exits 1 when a target is missed. The table goes to stdout and the whole
record to ``benchmarks/results/bench_download-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import random
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from benchlib import (
    GIB,
    MIB,
    REPO,
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
from detserve.download import DEFAULT_EXCLUDE, DEFAULT_INCLUDE

TARGET_RATIO = 1.5
TARGET_MB = 200.0
MB = 1e6
REPO_ID = "bench/synthetic-model"
#: what the live display shows while fetching: the bar's name and a throughput
PROGRESS_MARKERS = {"bar": "downloading", "throughput": "B/s"}

#: huggingface_hub's snapshot_download alone: argv is endpoint, repo, commit, cache, patterns
BASELINE = """\
import json, sys
from huggingface_hub import snapshot_download
endpoint, repo_id, revision, cache_dir, patterns = sys.argv[1:]
include, exclude = json.loads(patterns)
snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                  token=False, allow_patterns=include, ignore_patterns=exclude)
"""


def _olah_hub() -> ModuleType:
    path = REPO / "scripts" / "stack" / "olah_hub.py"
    spec = importlib.util.spec_from_file_location("olah_hub", path)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["olah_hub"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# --- the synthetic model -----------------------------------------------------------------------


def write_model(folder: Path, total_bytes: int, shards: int) -> dict[str, str]:
    """The model's files in ``folder``; returns the sha256 of each file vLLM loads."""
    folder.mkdir(parents=True)
    digests: dict[str, str] = {}
    size = total_bytes // shards
    names = [f"model-{n:05d}-of-{shards:05d}.safetensors" for n in range(1, shards + 1)]
    for number, name in enumerate(names):
        rng, digest = random.Random(number), hashlib.sha256()
        with (folder / name).open("wb") as out:
            left = size
            while left:
                chunk = rng.randbytes(min(left, 16 * MIB))
                out.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        digests[name] = digest.hexdigest()
    small = {
        "model.safetensors.index.json": json.dumps(
            {
                "metadata": {"total_size": size * shards},
                "weight_map": {f"w{i}": n for i, n in enumerate(names)},
            }
        ),
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}),
        "generation_config.json": json.dumps({"do_sample": False}),
        "tokenizer.json": json.dumps({"model": {"vocab": {f"t{i}": i for i in range(20000)}}}),
        "tokenizer_config.json": json.dumps({"model_max_length": 4096}),
    }
    for name, text in small.items():
        data = (text + "\n").encode()
        (folder / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    (folder / "README.md").write_text("# a synthetic model for bench_download\n")
    return digests


def manifest_text(digests: dict[str, str]) -> bytes:
    return b"".join(
        f"{digests[name]}  ./{name}\n".encode()
        for name in sorted(digests, key=lambda n: n.encode())
    )


def profile(repo_id: str, revision: str, hf_home: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((REPO / "configs" / "tiny-cpu.json").read_text())
    document["model"] = {"id": repo_id, "ref": "main", "revision": revision}
    document["snapshot"] = {"hf_home": str(hf_home), "manifest_dir": "../manifests"}
    return document


def fetched_files(snapshot: Path) -> dict[str, str]:
    """Each file of a snapshot and its sha256, to compare what the two fetched."""
    found = {}
    for path in sorted(snapshot.iterdir()):
        with path.open("rb") as handle:
            found[path.name] = hashlib.file_digest(handle, "sha256").hexdigest()
    return found


# --- the rounds --------------------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    round: int
    seconds: float
    ru_maxrss_mb: float
    peak_tree_mb: float
    user_s: float
    system_s: float
    #: seconds after launch at which each progress marker first showed (detserve only)
    progress_marks: dict[str, float]

    @property
    def peak_mb(self) -> float:
        return max(self.ru_maxrss_mb, self.peak_tree_mb)


def _timed(tool: str, number: int, argv: list[str], markers: dict[str, str]) -> Run:
    child = run_child(argv, tty=True, markers=markers, tree_rss=True)
    return Run(
        tool=tool,
        round=number,
        seconds=round(child.seconds, 3),
        ru_maxrss_mb=round(child.max_rss_bytes / MB, 1),
        peak_tree_mb=round(child.peak_tree_rss_bytes / MB, 1),
        user_s=round(child.user_seconds, 3),
        system_s=round(child.system_seconds, 3),
        progress_marks={k: round(v, 3) for k, v in child.marks.items()},
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--total-gib", type=float, default=1.0, help="model size (1 GiB)")
    parser.add_argument("--shards", type=int, default=4, help="weight files (4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each tool (3)")
    add_workdir_options(parser, "model, repository and downloads")
    add_results_option(parser)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.total_gib <= 0 or args.shards < 1 or args.rounds < 1:
        parser.error("--total-gib must be > 0, --shards and --rounds >= 1")


def run(args: argparse.Namespace) -> Outcome:
    with work_folder("detserve-bench-download-", args) as work:
        return bench(args, work)


def bench(args: argparse.Namespace, work: Path) -> Outcome:
    olah_hub = _olah_hub()
    total = int(args.total_gib * GIB)
    started = time.perf_counter()
    digests = write_model(work / "model", total, args.shards)
    source = {p.name: p for p in sorted((work / "model").iterdir())}
    with olah_hub.OlahHub(work / "olah") as hub:
        _, commit = hub.model(REPO_ID, source)
        shutil.rmtree(work / "model")  # the repository holds its own copy (git LFS objects)
        say(f"served {total / GIB:.2f} GiB in {args.shards} shards as {REPO_ID}@{commit} at "
            f"{hub.url} (made in {time.perf_counter() - started:.1f} s)")  # fmt: skip
        configs, manifests = work / "configs", work / "manifests" / "tiny-cpu"
        configs.mkdir()
        manifests.mkdir(parents=True)
        (manifests / f"{commit}.sha256").write_bytes(manifest_text(digests))
        patterns = json.dumps([list(DEFAULT_INCLUDE), list(DEFAULT_EXCLUDE)])
        folder = "models--" + REPO_ID.replace("/", "--")
        runs: list[Run] = []
        for number in range(1, args.rounds + 1):
            cache = work / "baseline-cache"
            baseline = [
                sys.executable,
                "-c",
                BASELINE,
                hub.url,
                REPO_ID,
                commit,
                str(cache),
                patterns,
            ]
            runs.append(_timed("snapshot_download", number, baseline, {}))
            expected = fetched_files(cache / folder / "snapshots" / commit)
            shutil.rmtree(cache)

            hf_home = work / "hf-home"
            config = configs / "bench.json"
            config.write_text(json.dumps(profile(REPO_ID, commit, hf_home), indent=2))
            ours = [sys.executable, "-m", "detserve", "download", "--config", str(config),
                    "--endpoint", hub.url]  # fmt: skip
            runs.append(_timed("detserve download", number, ours, PROGRESS_MARKERS))
            got = fetched_files(hf_home / "hub" / folder / "snapshots" / commit)
            shutil.rmtree(hf_home)
            if got != expected or set(got) != set(digests):
                raise BenchError(
                    f"the two fetched different files: snapshot_download {sorted(expected)}, "
                    f"detserve {sorted(got)}, the manifest {sorted(digests)}"
                )
            say(f"round {number}: snapshot_download {runs[-2].seconds:.2f} s, detserve "
                f"download {runs[-1].seconds:.2f} s, {runs[-1].peak_mb:.0f} MB")  # fmt: skip
        hub.check_offline()
    return report(args, runs, total, commit)


def report(args: argparse.Namespace, runs: list[Run], total: int, commit: str) -> Outcome:
    base = [r for r in runs if r.tool == "snapshot_download"]
    ours = [r for r in runs if r.tool == "detserve download"]
    base_s = statistics.median(r.seconds for r in base)
    ours_s = statistics.median(r.seconds for r in ours)
    ratio = ours_s / base_s
    peak = max(r.peak_mb for r in ours)
    shown = sum(1 for r in ours if set(PROGRESS_MARKERS) <= set(r.progress_marks))
    targets = (
        Target("download: wall time / snapshot_download's (x, at most)", ratio, TARGET_RATIO,
               ratio <= TARGET_RATIO),
        Target("download: peak memory (MB, under)", peak, TARGET_MB, peak < TARGET_MB),
        Target("download: rounds with the progress display shown (of all)", shown, len(ours),
               shown == len(ours)),
    )  # fmt: skip
    print(f"download of {total / GIB:.2f} GiB ({args.shards} shards) through olah, "
          f"{args.rounds} round(s), medians")  # fmt: skip
    print(f"{'tool':<18} {'wall s':>7} {'MB/s':>7} {'user s':>7} {'peak MB':>8}")
    for name, group, median in (
        ("snapshot_download", base, base_s),
        ("detserve download", ours, ours_s),
    ):
        print(
            f"{name:<18} {median:>7.2f} {total / median / MB:>7.1f} "
            f"{statistics.median(r.user_s for r in group):>7.2f} "
            f"{max(r.peak_mb for r in group):>8.1f}"
        )
    for target in targets:
        print(f"{target.name}: {target.measured:.3g} (target {target.target:g}) "
              f"{'met' if target.met else 'MISSED'}")  # fmt: skip
    record: dict[str, object] = record_head_when(BENCHMARK.name) | {
        "model": {"bytes": total, "shards": args.shards, "commit": commit, "repo": REPO_ID},
        "server": "olah (scripts/stack/olah_hub.py), offline, loopback",
        "patterns": {"include": list(DEFAULT_INCLUDE), "exclude": list(DEFAULT_EXCLUDE)},
        "medians_s": {"snapshot_download": base_s, "detserve download": ours_s},
        "targets": [t.as_json() for t in targets],
        "runs": [asdict(r) | {"peak_mb": r.peak_mb} for r in runs],
    }
    out = write_result(BENCHMARK.name, record, stamp=utc_stamp(), folder=args.results)
    say(f"wrote {out}")
    return Outcome(record, out, targets)


BENCHMARK = Benchmark("bench_download", __doc__, add_arguments, run, check_arguments)

if __name__ == "__main__":
    sys.exit(BENCHMARK.main())
