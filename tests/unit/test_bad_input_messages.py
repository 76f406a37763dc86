"""Bad input says what is wrong in a bounded message that never echoes a secret, and is exit 2
(or the documented 1 for a snapshot that changes while it is read), never an internal error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detserve import hashing, snapshot
from detserve.errors import (
    EXIT_INPUT,
    EXIT_VERIFICATION,
    MAX_DETAIL_LINES,
    MAX_LINE_CHARS,
    DetserveError,
)

from .committed import TINY_CONFIG, CliRunner, TinyWorkspace, sha256_hex
from .runlog_builders import sha, write_log

#: No error about one input needs more than this on stderr.
STDERR_BOUND = (MAX_DETAIL_LINES + 12) * (MAX_LINE_CHARS + 100)


def test_a_secrets_file_given_as_a_profile_is_not_echoed(tmp_path: Path, cli: CliRunner) -> None:
    env = tmp_path / ".env"
    env.write_text("HF_TOKEN=hf_live_secret_value\n", encoding="utf-8")
    result = cli("config", "validate", "--config", env)
    assert result.code == EXIT_INPUT, result.text
    assert "hf_live_secret_value" not in result.text
    assert "line 1 column 1" in result.err  # where and what, not the content


@pytest.mark.parametrize(
    "document",
    [b'{"token": "hf_live_secret_value", "x": ', b'["hf_live_secret_value"]'],
    ids=["truncated-json", "not-an-object"],
)
def test_a_json_file_of_the_wrong_shape_is_not_echoed(
    tmp_path: Path, cli: CliRunner, document: bytes
) -> None:
    path = tmp_path / "profile.json"
    path.write_bytes(document)
    result = cli("config", "validate", "--config", path)
    assert result.code == EXIT_INPUT, result.text
    assert "hf_live_secret_value" not in result.text


def test_a_400_kb_invalid_profile_is_not_echoed_whole(tmp_path: Path, cli: CliRunner) -> None:
    document = json.loads(TINY_CONFIG.read_text(encoding="utf-8"))
    document["model"]["revision"] = "x" * 400_000
    document["name"] = ["y" * 1000] * 400
    path = tmp_path / "big.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    result = cli("config", "validate", "--config", path)
    assert result.code == EXIT_INPUT, result.text
    assert "model.revision" in result.err
    assert len(result.err) < 4 * MAX_LINE_CHARS, len(result.err)


def test_a_20_mib_path_does_not_print_20_mb(tmp_path: Path, cli: CliRunner) -> None:
    path = "d/" + "x" * (20 * 1024 * 1024)
    result = cli("verify", "--snapshot", tmp_path, "--manifest", path)
    assert result.code == EXIT_INPUT, result.err[:500]
    assert len(result.err) < STDERR_BOUND
    assert "more characters not shown" in result.err


def test_error_details_are_bounded_in_length_and_number() -> None:
    error = DetserveError("x" * 10**6, details=["y" * 10**6] * 10_000, hint="z" * 10**6)
    text = error.diagnostics()
    assert len(text) < STDERR_BOUND
    assert f"and {10_000 - MAX_DETAIL_LINES} more not shown" in text
    assert "\x1b" not in DetserveError("name\x1b[2Jcleared").diagnostics()


# --- datasets -----------------------------------------------------------------------------------


def _bootstrap(cli: CliRunner, ws: TinyWorkspace, tmp_path: Path, data: bytes) -> str:
    dataset = tmp_path / "data.jsonl"
    dataset.write_bytes(data)
    result = cli(
        "prompts", "bootstrap", "--config", ws.config, "--output-dir", tmp_path / "out",
        "--n-prompts", "2", "--dataset-file", dataset, "--dataset-sha256", sha256_hex(data),
    )  # fmt: skip
    assert result.code == EXIT_INPUT, result.text
    assert "internal error" not in result.err
    assert not (tmp_path / "out").exists()
    return result.err


def test_a_lone_surrogate_in_a_dataset_line_exits_2(
    tiny_workspace: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    err = _bootstrap(cli, tiny_workspace, tmp_path, b'{"text": "ok"}\n{"text": "a\\ud800b"}\n')
    assert "data.jsonl:2" in err
    assert "lone surrogate" in err


def test_a_duplicate_key_in_a_dataset_line_exits_2(
    tiny_workspace: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    err = _bootstrap(cli, tiny_workspace, tmp_path, b'{"text": "shown", "text": "used"}\n')
    assert "data.jsonl:1" in err
    assert "duplicate key" in err


# --- a snapshot that changes while it is read ----------------------------------------------------


def _plain_snapshot(tmp_path: Path) -> Path:
    root = tmp_path / "snap"
    root.mkdir()
    for name in ("a.bin", "b.bin", "c.bin"):
        (root / name).write_bytes(name.encode() * 100)
    return root


@pytest.mark.parametrize("change", ["vanishes", "becomes-a-fifo"])
@pytest.mark.parametrize("command", ["hash", "verify"])
def test_a_file_that_changes_between_scan_and_hash_is_a_race_exit_1(
    tmp_path: Path, cli: CliRunner, monkeypatch: pytest.MonkeyPatch, command: str, change: str
) -> None:
    root = _plain_snapshot(tmp_path)
    manifest = tmp_path / "snap.sha256"
    assert cli("hash", "--snapshot", root, "--output", manifest).code == 0
    real_hash_files = hashing.hash_files

    def scan_then_change(*args: object, **kwargs: object) -> object:
        (root / "b.bin").unlink()
        if change == "becomes-a-fifo":
            import os

            os.mkfifo(root / "b.bin")
        return real_hash_files(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot, "hash_files", scan_then_change)
    if command == "hash":
        result = cli("hash", "--snapshot", root, "--output", tmp_path / "again.sha256")
    else:
        result = cli("verify", "--snapshot", root, "--manifest", manifest)
    assert result.code == EXIT_VERIFICATION, result.text
    assert "changed while it was read" in result.err
    assert "b.bin" in result.err
    assert "internal error" not in result.err


def test_a_file_that_vanishes_during_the_scan_is_a_race_exit_1(
    tmp_path: Path, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    root = _plain_snapshot(tmp_path)
    real_lstat = os.lstat

    def vanishing(path: str, *args: object, **kwargs: object) -> os.stat_result:
        # The scan lists a folder, then lstat()s each entry: b.bin goes in between.
        if Path(path).name == "b.bin":
            Path(path).unlink(missing_ok=True)
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", vanishing)
    result = cli("hash", "--snapshot", root, "--output", tmp_path / "m.sha256")
    assert result.code == EXIT_VERIFICATION, result.text
    assert "changed while it was read" in result.err
    assert "internal error" not in result.err


# --- eval-determinism shows differing pins in full ----------------------------------------------


def test_pins_that_differ_in_their_last_character_are_shown_in_full(
    tmp_path: Path, cli: CliRunner
) -> None:
    digest = sha("manifest")
    other = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    image = "localhost:5000/detserve/vllm-cpu@sha256:" + "c" * 64
    other_image = image[:-1] + "d"
    run_a = write_log(tmp_path / "a.runlog.jsonl", 2)
    run_b = write_log(tmp_path / "b.runlog.jsonl", 2, manifest_sha256=other, image=other_image)
    result = cli("eval-determinism", "--run-a", run_a, "--run-b", run_b)
    assert result.code == EXIT_VERIFICATION, result.text
    for shown in (result.out, result.err):
        assert f"pins.manifest_sha256: run A '{digest}', run B '{other}'" in shown
        assert f"pins.image: run A '{image}', run B '{other_image}'" in shown
