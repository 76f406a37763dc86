"""Writing never destroys what it should not.

Every output of every command, crossed with what must never be replaced, with and without
``--force``: a device, a FIFO, a directory, a symbolic link (to a file, or dangling), the command's
own input and a hard link to it. Each must exit 2 and leave the thing as it was. Then the atomic
write itself: a link planted between the check and the commit is never followed nor replaced.
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

from detserve import fileio
from detserve.errors import EXIT_INPUT, EngineError, OutputExistsError, UnsafeOutputError
from detserve.runtime.docker_engine import DockerEngine

from .committed import BUNDLE_DIR, BUNDLE_PIN, CliRunner, TinyWorkspace, sha256_hex
from .runlog_builders import write_log


@dataclass(frozen=True)
class World:
    ws: TinyWorkspace
    tmp: Path
    run_a: Path
    run_b: Path
    dataset: Path


@pytest.fixture
def world(tiny_workspace: TinyWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    def no_engine(cls: type[DockerEngine]) -> DockerEngine:
        raise EngineError("the test's engine is unreachable")  # exit 3: the check came too late

    monkeypatch.setattr(DockerEngine, "from_env", classmethod(no_engine))
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "5a" * 32
    tiny_workspace.config.write_text(json.dumps(document, indent=2), encoding="utf-8")
    dataset = tmp_path / "data.jsonl"
    dataset.write_text('{"text": "hello"}\n', encoding="utf-8")
    return World(
        ws=tiny_workspace,
        tmp=tmp_path,
        run_a=write_log(tmp_path / "a.runlog.jsonl", 3),
        run_b=write_log(tmp_path / "b.runlog.jsonl", 3),
        dataset=dataset,
    )


@dataclass(frozen=True)
class Output:
    """One output of one command.

    ``argv(world, out, source)``: the command line writing to ``out`` (a file, or with ``inside``
    the directory holding the file ``inside``) and reading the input ``source`` (by default
    ``default_source(world)``).
    """

    argv: Callable[[World, Path, Path], list[str | Path]]
    default_source: Callable[[World], Path]
    inside: str | None = None


def _sample(w: World, run_log: Path, sidecar: Path) -> list[str | Path]:
    return [
        "sample", "--config", w.ws.config, "--bundle", BUNDLE_DIR, "--bundle-pin", BUNDLE_PIN,
        "--run-log-output", run_log, "--output", sidecar,
    ]  # fmt: skip


def _replay(w: World, out: Path, claim: Path) -> list[str | Path]:
    return [
        "replay", "--claim", claim, "--config", w.ws.config, "--bundle", BUNDLE_DIR,
        "--bundle-pin", BUNDLE_PIN, "--output-dir", out,
    ]  # fmt: skip


def _bootstrap(w: World, out: Path, dataset: Path) -> list[str | Path]:
    return [
        "prompts", "bootstrap", "--config", w.ws.config, "--output-dir", out, "--n-prompts", "1",
        "--dataset-file", dataset, "--dataset-sha256", sha256_hex(dataset.read_bytes()),
    ]  # fmt: skip


def _expected_hash(w: World, out: Path, log: Path) -> list[str | Path]:
    return ["eval-determinism", "--run-a", log, "--expected-hash", "0" * 64, "--output", out]


def _majority(w: World, out: Path, log: Path) -> list[str | Path]:
    third = w.tmp / "c.runlog.jsonl"
    return ["eval-determinism", "--run", w.run_a, "--run", log, "--run", third, "--output", out]


OUTPUTS = {
    "hash --output": Output(
        lambda w, out, src: ["hash", "--config", src, "--output", out], lambda w: w.ws.config
    ),
    "sample --run-log-output": Output(
        lambda w, out, src: _sample(w, out, w.tmp / "s.sidecar.json"), lambda w: w.ws.manifest
    ),
    "sample --output": Output(
        lambda w, out, src: _sample(w, w.tmp / "s.runlog.jsonl", out), lambda w: w.ws.config
    ),
    "eval-determinism --output": Output(
        lambda w, out, src: ["eval-determinism", "--run-a", w.run_a, "--run-b", src, "-o", out],
        lambda w: w.run_b,
    ),
    "eval-determinism --expected-hash --output": Output(_expected_hash, lambda w: w.run_a),
    "eval-determinism --run --output": Output(_majority, lambda w: w.run_b),
    "lock-model --write --output": Output(
        lambda w, out, src: ["lock-model", "--config", src, "--write", "--output", out],
        lambda w: w.ws.config,
    ),
    "lock-image --write --output": Output(
        lambda w, out, src: ["lock-image", "--config", src, "--write", "--output", out],
        lambda w: w.ws.config,
    ),
    "replay --output-dir (report.json)": Output(_replay, lambda w: w.run_a, "report.json"),
    "replay --output-dir (replay.runlog.jsonl)": Output(
        _replay, lambda w: w.run_a, "replay.runlog.jsonl"
    ),
    "replay --output-dir (replay.sidecar.json)": Output(
        _replay, lambda w: w.run_a, "replay.sidecar.json"
    ),
    "prompts bootstrap --output-dir (prompts.jsonl)": Output(
        _bootstrap, lambda w: w.dataset, "prompts.jsonl"
    ),
    "prompts bootstrap --output-dir (bundle.json)": Output(
        _bootstrap, lambda w: w.dataset, "bundle.json"
    ),
    "eval-determinism --junit-xml": Output(
        lambda w, out, src: [
            "eval-determinism",
            "--run-a",
            src,
            "--run-b",
            w.run_b,
            "--junit-xml",
            out,
        ],
        lambda w: w.run_a,
    ),
    "check --junit-xml": Output(
        lambda w, out, src: [
            "check",
            "--config",
            src,
            "--output-dir",
            w.tmp / "pack",
            "--bundle",
            BUNDLE_DIR,
            "--bundle-pin",
            BUNDLE_PIN,
            "--junit-xml",
            out,
        ],
        lambda w: w.ws.config,
    ),
}

KINDS = ["device", "fifo", "directory", "symlink", "dangling-symlink", "the-input", "hard-link"]


def _state(path: Path) -> tuple[object, ...]:
    """What must not change: the type, the link target, the inode and the content."""
    info = os.lstat(path)
    content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
    link = path.readlink() if stat.S_ISLNK(info.st_mode) else None
    return stat.S_IFMT(info.st_mode), link, info.st_ino, content


@pytest.mark.timeout(30)
@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(OUTPUTS))
def test_an_output_that_must_not_be_replaced_exits_2_and_is_untouched(
    world: World, cli: CliRunner, name: str, kind: str, force: bool
) -> None:
    output = OUTPUTS[name]
    source = output.default_source(world)
    shutil.copyfile(world.run_a, world.tmp / "c.runlog.jsonl")  # the majority's third log
    out_dir = world.tmp / "out"
    if output.inside is None:
        target = out = world.tmp / "out.file"
    else:
        out_dir.mkdir()
        target, out = out_dir / output.inside, out_dir
    victim = world.tmp / "victim"
    victim.write_bytes(b"not yours")
    if kind == "device":
        if os.geteuid() == 0:
            # A node of our own, like /dev/null: a test that failed must not break the machine.
            os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        elif output.inside is None:
            target = out = Path("/dev/null")  # not replaceable without privileges anyway
        else:
            pytest.skip("a device node inside a directory needs privileges to make")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    elif kind == "symlink":
        target.symlink_to(victim)
    elif kind == "dangling-symlink":
        target.symlink_to(world.tmp / "ghost")
    elif kind == "the-input":
        if output.inside is None:
            target = out = source
        else:
            shutil.copyfile(source, target)
            source = target
    elif kind == "hard-link":
        os.link(source, target)
    before = {path: _state(path) for path in (target, victim, source)}
    result = cli(*output.argv(world, out, source), *(["--force"] if force else []))
    assert result.code == EXIT_INPUT, result.text
    assert "internal error" not in result.err
    assert {path: _state(path) for path in before} == before
    assert not (world.tmp / "ghost").exists()


@pytest.mark.parametrize("command", ["lock-model", "lock-image"])
def test_lock_in_place_refuses_a_profile_that_is_a_symlink(
    world: World, cli: CliRunner, command: str
) -> None:
    real = world.ws.config.with_name("real.json")
    world.ws.config.rename(real)
    world.ws.config.symlink_to(real.name)
    before = real.read_bytes()
    result = cli(command, "--config", world.ws.config, "--write")
    assert result.code == EXIT_INPUT, result.text
    assert "symbolic link" in result.err
    assert world.ws.config.is_symlink()
    assert real.read_bytes() == before


def test_bootstrap_refuses_a_non_empty_directory_without_force(
    world: World, cli: CliRunner
) -> None:
    out = world.tmp / "bundle"
    out.mkdir()
    (out / "stray.txt").write_text("would be pinned by the next hash")
    result = cli(*_bootstrap(world, out, world.dataset))
    assert result.code == EXIT_INPUT, result.text
    assert "not empty" in result.err
    assert sorted(p.name for p in out.iterdir()) == ["stray.txt"]


def test_two_outputs_that_are_one_file_are_refused(world: World, cli: CliRunner) -> None:
    result = cli(*_sample(world, world.tmp / "x", world.tmp / "sub" / ".." / "x"))
    assert result.code == EXIT_INPUT, result.text
    assert "are the same file" in result.err


# --- the atomic write ---------------------------------------------------------------------------


def _write_while(target: Path, force: bool, meanwhile: Callable[[], object]) -> None:
    """An atomic write of ``target`` during which ``meanwhile`` runs."""
    with fileio.atomic_writer(target, force=force) as handle:
        handle.write(b"ours")
        meanwhile()


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_link_planted_while_writing_is_neither_followed_nor_replaced(
    tmp_path: Path, force: bool
) -> None:
    target = tmp_path / "report.json"
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    fileio.check_outputs([target], force=force)  # nothing there yet: the check passes
    with pytest.raises((OutputExistsError, UnsafeOutputError)):
        # planted after the check, before the commit
        _write_while(target, force, lambda: target.symlink_to(victim))
    assert target.is_symlink()
    assert victim.read_bytes() == b"not yours"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_a_file_planted_while_writing_is_not_clobbered_without_force(tmp_path: Path) -> None:
    target = tmp_path / "run.runlog.jsonl"
    with pytest.raises(OutputExistsError, match="appeared while writing"):
        _write_while(target, False, lambda: target.write_bytes(b"someone else's"))
    assert target.read_bytes() == b"someone else's"


def test_the_atomic_write_replaces_a_regular_file_with_force(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_bytes(b"old")
    fileio.atomic_write_bytes(target, b"new", force=True)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
