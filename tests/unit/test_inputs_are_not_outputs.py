"""No command writes over what it reads: every output of every command, crossed with every input
of that command, by the same path, a ``..`` spelling, a hard link and a symbolic link, with
``--force``. Each must exit 2 and leave the input as it was (``sample --sidecar-output`` named
after its own ``--certificate`` replaced it; ``eval-determinism --sidecar --report-output`` named
after a log it compared replaced the log).

Outputs are checked by ``fileio.check_outputs`` before any input is read, so the inputs here are
valid only where a command must read one before it knows its outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from detserve.errors import EXIT_INPUT, EngineError
from detserve.runtime.docker_engine import DockerEngine

from .committed import BUNDLE_DIR, BUNDLE_PIN, CliRunner, TinyWorkspace, sha256_hex
from .fingerprints import make_fingerprint
from .runlog_builders import write_log

Paths = dict[str, Path]


@pytest.fixture
def paths(tiny_workspace: TinyWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """Every input a command may read, each its own file, and an output of each kind."""

    def no_engine(cls: type[DockerEngine], host: str | None = None) -> DockerEngine:
        raise EngineError("the test's engine is unreachable")  # exit 3: the check came too late

    monkeypatch.setattr(DockerEngine, "from_env", classmethod(no_engine))
    monkeypatch.setattr("detserve.runtime.probe.DockerProbe.from_env", no_engine)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "5a" * 32
    tiny_workspace.config.write_text(json.dumps(document, indent=2), encoding="utf-8")
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE_DIR, bundle)
    bundle_pin = tmp_path / "bundle.sha256"
    shutil.copyfile(BUNDLE_PIN, bundle_pin)
    logs = {name: write_log(tmp_path / f"{name}.runlog.jsonl", 3) for name in "abc"}
    sidecars = {}
    for name, log in logs.items():
        sidecars[name] = tmp_path / f"{name}.sidecar.json"
        sidecars[name].write_text(
            json.dumps(
                {
                    "run_log_sha256": sha256_hex(log.read_bytes()),
                    "environment": make_fingerprint().model_dump(mode="json"),
                }
            )
        )
    files = {
        "certificate": "certificate.json",
        "key": "operator.key",
        "public-key": "operator.pub",
        "envelope": "a.claim.intoto.json",
        "environment": "a.env.json",
        "dataset": "data.jsonl",
    }
    found: Paths = {}
    for role, name in files.items():
        found[role] = tmp_path / name
        found[role].write_text(f"{role}: any bytes; the output check comes before it is read\n")
    return found | {
        "config": tiny_workspace.config,
        "manifest": tiny_workspace.manifest,
        "snapshot": tiny_workspace.snapshot,
        "bundle": bundle,
        "bundle-pin": bundle_pin,
        "run-a": logs["a"],
        "run-b": logs["b"],
        "run-c": logs["c"],
        "sidecar-a": sidecars["a"],
        "sidecar-b": sidecars["b"],
        "sidecar-c": sidecars["c"],
        "claim": logs["a"],
        "out-file": tmp_path / "out" / "result.json",
        "out-file-2": tmp_path / "out" / "result-2.json",
        "out-dir": tmp_path / "out-dir",
    }


@dataclass(frozen=True)
class Command:
    """A command line of ``paths``; the roles it reads and the roles it writes.

    An output role ``out-dir/NAME`` is the file NAME the command writes into its directory.
    """

    argv: Callable[[Paths], list[str | Path]]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _bundle(p: Paths) -> list[str | Path]:
    return ["--bundle", p["bundle"], "--bundle-pin", p["bundle-pin"]]


def _sample(p: Paths) -> list[str | Path]:
    return [
        "sample",
        "--config",
        p["config"],
        *_bundle(p),
        "--run-log-output",
        p["out-file"],
        "--sidecar-output",
        p["out-file-2"],
    ]


COMMANDS: dict[str, Command] = {
    "sample": Command(
        _sample,
        ("config", "manifest", "snapshot", "bundle", "bundle-pin"),
        ("out-file", "out-file-2"),
    ),
    "sample --certificate": Command(
        lambda p: [
            *_sample(p),
            "--concurrency",
            "2",
            "--certificate",
            p["certificate"],
        ],
        ("certificate",),
        ("out-file", "out-file-2"),
    ),
    "replay": Command(
        lambda p: [
            "replay",
            "--claim",
            p["claim"],
            "--config",
            p["config"],
            *_bundle(p),
            "--output-dir",
            p["out-dir"],
        ],
        ("claim", "config", "manifest", "snapshot", "bundle-pin"),
        ("out-dir/replay.runlog.jsonl", "out-dir/replay.sidecar.json", "out-dir/report.json"),
    ),
    "replay (signed)": Command(
        lambda p: [
            "replay",
            "--claim",
            p["envelope"],
            "--public-key",
            p["public-key"],
            "--run-log",
            p["run-a"],
            "--config",
            p["config"],
            *_bundle(p),
            "--output-dir",
            p["out-dir"],
        ],
        ("envelope", "public-key", "run-a", "config", "bundle-pin"),
        ("out-dir/replay.runlog.jsonl", "out-dir/report.json"),
    ),
    "check": Command(
        lambda p: ["check", "--config", p["config"], *_bundle(p), "--output-dir", p["out-dir"]],
        ("config", "manifest", "snapshot", "bundle-pin"),
        ("out-dir/certificate.json", "out-dir/report.json"),
    ),
    "fleet": Command(
        lambda p: [
            "fleet",
            "--config",
            p["config"],
            "--claim",
            p["claim"],
            *_bundle(p),
            "--output-dir",
            p["out-dir"],
        ],
        ("claim", "config", "manifest", "snapshot", "bundle-pin"),
        ("out-dir/fleet.json",),
    ),
    "env": Command(
        lambda p: ["env", "--config", p["config"], "--fingerprint-output", p["out-file"]],
        ("config", "manifest", "snapshot"),
        ("out-file",),
    ),
    "attest": Command(
        lambda p: [
            "attest",
            "--run-log",
            p["run-a"],
            "--sidecar",
            p["sidecar-a"],
            "--key",
            p["key"],
            "--environment",
            p["environment"],
            "--envelope-output",
            p["out-file"],
        ],
        ("run-a", "sidecar-a", "key", "environment"),
        ("out-file",),
    ),
    "eval-determinism": Command(
        lambda p: [
            "eval-determinism",
            "--run-a",
            p["run-a"],
            "--run-b",
            p["run-b"],
            "--report-output",
            p["out-file"],
        ],
        ("run-a", "run-b"),
        ("out-file",),
    ),
    "eval-determinism --sidecar": Command(
        lambda p: [
            "eval-determinism",
            "--run-a",
            p["run-a"],
            "--run-b",
            p["run-b"],
            "--sidecar",
            p["sidecar-a"],
            "--sidecar",
            p["sidecar-b"],
            "--report-output",
            p["out-file"],
        ],
        ("run-a", "run-b", "sidecar-a", "sidecar-b"),
        ("out-file",),
    ),
    "eval-determinism --run --sidecar": Command(
        lambda p: [
            "eval-determinism",
            "--run",
            p["run-a"],
            "--run",
            p["run-b"],
            "--run",
            p["run-c"],
            "--sidecar",
            p["sidecar-a"],
            "--sidecar",
            p["sidecar-b"],
            "--sidecar",
            p["sidecar-c"],
            "--report-output",
            p["out-file"],
        ],
        ("run-a", "run-b", "run-c", "sidecar-a"),
        ("out-file",),
    ),
    "eval-determinism --expected-hash --sidecar": Command(
        lambda p: [
            "eval-determinism",
            "--run-a",
            p["run-a"],
            "--expected-hash",
            "0" * 64,
            "--sidecar",
            p["sidecar-a"],
            "--sidecar",
            p["sidecar-b"],
            "--report-output",
            p["out-file"],
        ],
        ("run-a", "sidecar-a", "sidecar-b"),
        ("out-file",),
    ),
    "hash": Command(
        lambda p: ["hash", "--config", p["config"], "--manifest-output", p["out-file"]],
        ("config", "snapshot"),
        ("out-file",),
    ),
    "lock-image --write": Command(
        lambda p: [
            "lock-image",
            "--config",
            p["config"],
            "--write",
            "--profile-output",
            p["out-file"],
        ],
        ("config",),
        ("out-file",),
    ),
    "prompts bootstrap": Command(
        lambda p: [
            "prompts",
            "bootstrap",
            "--config",
            p["config"],
            "--output-dir",
            p["out-dir"],
            "--n-prompts",
            "1",
            "--dataset-file",
            p["dataset"],
            "--dataset-sha256",
            "0" * 64,
        ],
        ("config", "dataset", "snapshot"),
        ("out-dir/prompts.jsonl",),
    ),
    "serve": Command(
        lambda p: [
            "serve",
            "--config",
            p["config"],
            "--transcript-dir",
            p["out-dir"],
            "--concurrency",
            "2",
            "--certificate",
            p["certificate"],
        ],
        ("certificate", "manifest", "snapshot", "config"),
        ("out-dir",),
    ),
}

WAYS = ("same-path", "dot-dot", "hard-link", "symbolic-link")
#: inputs found through the profile (or, for the profile, found relative to it): never moved
FIXED = frozenset({"config", "manifest", "snapshot"})


def _possible(source: str, target: str, way: str) -> bool:
    # an input the profile locates cannot be moved to where a named output goes; links can
    return not ("/" in target and source in FIXED and way in {"same-path", "dot-dot"})


CASES = [
    pytest.param(name, source, target, way, id=f"{name}:{source}->{target}:{way}")
    for name, command in COMMANDS.items()
    for source in command.inputs
    for target in command.outputs
    for way in WAYS
    if _possible(source, target, way)
]


def _state(path: Path) -> object:
    if path.is_dir():
        return sorted((p.name, p.stat().st_ino, p.stat().st_size) for p in path.iterdir())
    info = os.lstat(path)
    return stat.S_IFMT(info.st_mode), info.st_ino, path.read_bytes()


def _into_directory(paths: Paths, read: Path, role: str, name: str, way: str) -> None:
    """The output ``role`` made into (or inside) the input directory ``read``."""
    if way == "symbolic-link":
        link = read.parent / f"{read.name}-link"
        link.symlink_to(read, target_is_directory=True)
        place = link
    elif way == "dot-dot":
        place = read / "never-made" / ".."
    else:
        place = read
    inside = way == "hard-link" or (not name and role != "out-dir")
    paths[role] = place / "new" if inside else place


def _aim(paths: Paths, source: str, target: str, way: str) -> tuple[Paths, Path]:
    """``paths`` with the output ``target`` made into the input ``source`` in ``way``; and the
    path of that input."""
    paths = dict(paths)
    read = paths[source]
    role, _, name = target.partition("/")
    if read.is_dir():
        _into_directory(paths, read, role, name, way)
        return paths, read
    destination = (paths[role] / name) if name else paths[role]
    destination.parent.mkdir(parents=True, exist_ok=True)
    if way in {"same-path", "dot-dot"}:
        if name:
            shutil.move(read, destination)  # the input now lives where the output goes
            read = destination
            spelled = destination
            if way == "dot-dot":
                (destination.parent / "sub").mkdir()
                spelled = destination.parent / "sub" / ".." / destination.name
            paths[source] = spelled
        else:
            (read.parent / "sub").mkdir(exist_ok=True)
            paths[role] = read if way == "same-path" else read.parent / "sub" / ".." / read.name
    elif way == "hard-link":
        os.link(read, destination)
        if not name:
            paths[role] = destination
    else:
        destination.symlink_to(read)
        if not name:
            paths[role] = destination
    if source == "claim":
        paths["run-a"] = paths["claim"]
    return paths, read


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "source", "target", "way"), CASES)
def test_no_output_is_an_input(
    paths: Paths, cli: CliRunner, name: str, source: str, target: str, way: str
) -> None:
    aimed, read = _aim(paths, source, target, way)
    before = _state(read)
    ran = cli(*COMMANDS[name].argv(aimed), "--force")
    assert ran.code == EXIT_INPUT, ran.text
    assert "internal error" not in ran.err
    assert _state(read) == before
