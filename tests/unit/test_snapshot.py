"""Snapshot verification: a tampered copy of the tiny model fails, naming the file.

Every test works on a copy of the committed Hugging Face cache folder (blobs plus relative
symlinks), so what it changes is what a tampered cache would look like.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from detserve.errors import EXIT_INPUT, EXIT_OK, EXIT_VERIFICATION, SnapshotMismatch
from detserve.hashing import DEFAULT_CHUNK_SIZE, hash_files, sha256_file
from detserve.snapshot import SnapshotDiff, scan_snapshot, verify_snapshot

from .committed import (
    REPO_ROOT,
    TINY_MANIFEST,
    TINY_SNAPSHOT,
    CliRunner,
    TinyWorkspace,
    sha256_hex,
    verify_copy,
)

DIGEST_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64})  \./(?P<path>.+)$")


def committed_digests() -> dict[str, str]:
    lines = TINY_MANIFEST.read_text(encoding="utf-8").splitlines()
    return {m["path"]: m["digest"] for m in map(DIGEST_LINE.match, lines) if m}


def verify(cli: CliRunner, ws: TinyWorkspace, *extra: str) -> tuple[int, str]:
    result = verify_copy(cli, ws, *extra)
    return result.code, result.err


def detail_lines(stderr: str) -> list[str]:
    return [line[2:] for line in stderr.splitlines() if line.startswith("  ")]


def replace_with_symlink(link: Path, target: str | Path) -> None:
    link.unlink()
    link.symlink_to(target)


# --- the clean copy ----------------------------------------------------------------------------


def test_clean_copy_verifies(tiny_snapshot_copy: TinyWorkspace, cli: CliRunner) -> None:
    result = verify_copy(cli, tiny_snapshot_copy)
    assert result.code == EXIT_OK, result.err
    assert result.out.startswith("OK: 6 files, 1725154 bytes match")


def test_coreutils_agrees_on_the_clean_copy(tiny_snapshot_copy: TinyWorkspace) -> None:
    checked = subprocess.run(
        ["sha256sum", "--strict", "-c", str(tiny_snapshot_copy.manifest)],
        cwd=tiny_snapshot_copy.snapshot,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == 6


def test_coreutils_agrees_on_a_flipped_byte(
    tiny_snapshot_copy: TinyWorkspace, cli: CliRunner
) -> None:
    flip_byte(tiny_snapshot_copy, "model.safetensors")
    code, _ = verify(cli, tiny_snapshot_copy)
    checked = subprocess.run(
        ["sha256sum", "-c", str(tiny_snapshot_copy.manifest)],
        cwd=tiny_snapshot_copy.snapshot,
        capture_output=True,
        text=True,
        check=False,
    )
    assert code == EXIT_VERIFICATION
    assert checked.returncode == 1
    assert "./model.safetensors: FAILED" in checked.stdout


def test_verify_committed_profile_from_repo_root(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    result = cli("verify", "--config", "configs/tiny-cpu.json")
    assert result.code == EXIT_OK, result.err
    assert "OK: 6 files" in result.out


def test_verify_copied_profile(tiny_workspace: TinyWorkspace, cli: CliRunner) -> None:
    result = cli("verify", "--config", tiny_workspace.config, "--json")
    assert result.code == EXIT_OK, result.err
    assert f'"snapshot":"{tiny_workspace.snapshot}"' in result.out
    assert f'"manifest_sha256":"{sha256_hex(TINY_MANIFEST.read_bytes())}"' in result.out


def test_verify_report_values(tiny_snapshot_copy: TinyWorkspace) -> None:
    report = verify_snapshot(tiny_snapshot_copy.snapshot, tiny_snapshot_copy.manifest, workers=2)
    assert report.files == 6
    assert report.bytes == sum(
        (TINY_SNAPSHOT / name).stat().st_size for name in committed_digests()
    )
    assert report.manifest_sha256 == sha256_hex(TINY_MANIFEST.read_bytes())


# --- tampering ---------------------------------------------------------------------------------


def flip_byte(ws: TinyWorkspace, name: str) -> None:
    blob = ws.blob_of(name)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))


def truncate(ws: TinyWorkspace, name: str, *, to: int | None = None) -> None:
    blob = ws.blob_of(name)
    os.truncate(blob, blob.stat().st_size // 2 if to is None else to)


Tamper = Callable[[TinyWorkspace], None]

# name -> (what is done to the copy, the report line it must produce, as a regular expression)
TAMPERING: dict[str, tuple[Tamper, str]] = {
    "flipped-byte": (
        lambda ws: flip_byte(ws, "model.safetensors"),
        r"changed: \./model\.safetensors expected 95681410\w{56} actual [0-9a-f]{64}",
    ),
    "truncated": (
        lambda ws: truncate(ws, "tokenizer.json"),
        r"changed: \./tokenizer\.json expected cb138284\w{56} actual [0-9a-f]{64}",
    ),
    "emptied": (
        lambda ws: truncate(ws, "special_tokens_map.json", to=0),
        r"changed: \./special_tokens_map\.json expected 462d9193\w{56} actual " + sha256_hex(b""),
    ),
    "deleted": (lambda ws: (ws.snapshot / "config.json").unlink(), r"missing: \./config\.json"),
    "added": (
        lambda ws: (ws.snapshot / "added.bin").write_bytes(b"\x00"),
        r"extra: \./added\.bin",
    ),
    "added-in-subdirectory": (
        lambda ws: (
            (ws.snapshot / "sub").mkdir(),
            (ws.snapshot / "sub" / "adapter.safetensors").write_bytes(b"x"),
        ),
        r"extra: \./sub/adapter\.safetensors",
    ),
    "symlink-outside-same-content": (
        # Even with identical bytes: a file outside the snapshot is not what was verified.
        lambda ws: replace_with_symlink(
            ws.snapshot / "config.json",
            _outside_copy(ws, ws.blob_of("config.json").read_bytes()),
        ),
        r"unsafe: \./config\.json symlink resolves outside the snapshot: -> .*outside",
    ),
    "symlink-outside-absolute": (
        lambda ws: replace_with_symlink(ws.snapshot / "generation_config.json", "/etc/passwd"),
        r"unsafe: \./generation_config\.json symlink resolves outside the snapshot: "
        r"-> /etc/passwd$",
    ),
    "symlink-into-another-models-blobs": (
        lambda ws: replace_with_symlink(
            ws.snapshot / "config.json", _other_model_blob(ws, ws.blob_of("config.json"))
        ),
        r"unsafe: \./config\.json symlink resolves outside the snapshot: .*models--other--model",
    ),
    "symlink-inside-to-another-file": (
        lambda ws: replace_with_symlink(
            ws.snapshot / "model.safetensors", "../../blobs/" + committed_digests()["config.json"]
        ),
        r"changed: \./model\.safetensors expected 95681410\w{56} actual "
        + committed_digests()["config.json"],
    ),
    "symlink-inside-to-sibling": (
        lambda ws: replace_with_symlink(ws.snapshot / "tokenizer_config.json", "config.json"),
        r"changed: \./tokenizer_config\.json expected 2f998834\w{56} actual "
        + committed_digests()["config.json"],
    ),
    "dangling-symlink": (
        lambda ws: replace_with_symlink(ws.snapshot / "tokenizer.json", "../../blobs/" + "0" * 64),
        r"unsafe: \./tokenizer\.json dangling symlink: -> \.\./\.\./blobs/0{64}",
    ),
    "symlink-to-directory": (
        lambda ws: replace_with_symlink(ws.snapshot / "config.json", "../../blobs"),
        r"unsafe: \./config\.json symlink to a non-regular file",
    ),
    "fifo-replacing-a-file": (
        lambda ws: (
            (ws.snapshot / "generation_config.json").unlink(),
            os.mkfifo(ws.snapshot / "generation_config.json"),
        ),
        r"unsafe: \./generation_config\.json not a regular file \(device, FIFO or socket\)",
    ),
    "fifo-added": (
        lambda ws: os.mkfifo(ws.snapshot / "pipe"),
        r"unsafe: \./pipe not a regular file",
    ),
    "newline-in-a-name": (
        lambda ws: (ws.snapshot / "evil\nname").write_bytes(b""),
        r"unsafe: \./evil\\nname name cannot be written in a manifest",
    ),
}


def _outside_copy(ws: TinyWorkspace, data: bytes) -> Path:
    outside = ws.root.parent / "outside" / "config.json"
    outside.parent.mkdir(exist_ok=True)
    outside.write_bytes(data)
    return outside


def _other_model_blob(ws: TinyWorkspace, blob: Path) -> Path:
    other = ws.model_dir.parent / "models--other--model" / "blobs"
    other.mkdir(parents=True)
    target = other / blob.name
    target.write_bytes(blob.read_bytes())
    return target


@pytest.mark.timeout(60)  # a FIFO that is opened blocks forever: fail instead of hanging
@pytest.mark.parametrize("case", sorted(TAMPERING), ids=str)
def test_tampered_copy_fails_naming_the_file(
    case: str, tiny_snapshot_copy: TinyWorkspace, cli: CliRunner
) -> None:
    tamper, expected = TAMPERING[case]
    tamper(tiny_snapshot_copy)
    code, err = verify(cli, tiny_snapshot_copy)
    assert code == EXIT_VERIFICATION, err
    details = detail_lines(err)
    assert len(details) == 1, err  # exactly the tampered entry, nothing else
    assert re.match(expected, details[0]), details[0]
    assert f"does not match manifest {tiny_snapshot_copy.manifest}" in err
    # and through --config, as `detserve run` would check it
    via_profile = cli("verify", "--config", tiny_snapshot_copy.config)
    assert via_profile.code == EXIT_VERIFICATION
    assert detail_lines(via_profile.err) == details


@pytest.mark.timeout(60)
def test_report_is_sorted_missing_extra_changed(
    tiny_snapshot_copy: TinyWorkspace, cli: CliRunner
) -> None:
    ws = tiny_snapshot_copy
    (ws.snapshot / "tokenizer.json").unlink()
    (ws.snapshot / "config.json").unlink()
    (ws.snapshot / "zz-extra.txt").write_text("z")
    (ws.snapshot / "aa-extra.txt").write_text("a")
    flip_byte(ws, "special_tokens_map.json")
    flip_byte(ws, "model.safetensors")
    os.mkfifo(ws.snapshot / "b-pipe")
    replace_with_symlink(ws.snapshot / "generation_config.json", "/etc/passwd")
    with ws.manifest.open("ab") as manifest:
        manifest.write(b"not a manifest line\n")
    code, err = verify(cli, ws)
    assert code == EXIT_VERIFICATION
    details = detail_lines(err)
    kinds = [line.split(":", 1)[0].split(" ", 1)[0] for line in details]
    assert kinds == [
        "manifest",
        "missing",
        "missing",
        "extra",
        "extra",
        "changed",
        "changed",
        "unsafe",
        "unsafe",
    ]
    assert details[0].startswith("manifest line 7: ")
    assert details[1:3] == ["missing: ./config.json", "missing: ./tokenizer.json"]
    assert details[3:5] == ["extra: ./aa-extra.txt", "extra: ./zz-extra.txt"]
    assert details[5].startswith("changed: ./model.safetensors expected")
    assert details[6].startswith("changed: ./special_tokens_map.json expected")
    assert details[7].startswith("unsafe: ./b-pipe ")
    assert details[8].startswith("unsafe: ./generation_config.json ")


def test_snapshot_diff_lines_order() -> None:
    diff = SnapshotDiff(
        missing=["b", "a"],
        extra=["d", "c"],
        changed=[("f", "1", "2"), ("e", "3", "4")],
        unsafe=[("h", "why"), ("g", "why")],
        manifest_problems=["line 1: x"],
    )
    assert diff.lines() == [
        "manifest line 1: x",
        "missing: ./a",
        "missing: ./b",
        "extra: ./c",
        "extra: ./d",
        "changed: ./e expected 3 actual 4",
        "changed: ./f expected 1 actual 2",
        "unsafe: ./g why",
        "unsafe: ./h why",
    ]
    assert not SnapshotDiff()


def test_failure_as_json(tiny_snapshot_copy: TinyWorkspace, cli: CliRunner) -> None:
    (tiny_snapshot_copy.snapshot / "config.json").unlink()
    result = verify_copy(cli, tiny_snapshot_copy, "--json")
    assert result.code == EXIT_VERIFICATION
    assert '"details":["missing: ./config.json"]' in result.out
    assert '"error":"snapshot-mismatch"' in result.out


def test_missing_snapshot_dir_is_bad_input(tmp_path: Path, cli: CliRunner) -> None:
    result = cli("verify", "--snapshot", tmp_path / "absent", "--manifest", TINY_MANIFEST)
    assert result.code == EXIT_INPUT


def test_scan_never_follows_a_directory_link(tiny_snapshot_copy: TinyWorkspace) -> None:
    (tiny_snapshot_copy.snapshot / "escape").symlink_to(tiny_snapshot_copy.root, True)
    scan = scan_snapshot(tiny_snapshot_copy.snapshot)
    assert set(scan.files) == set(committed_digests())
    assert list(scan.unsafe) == ["escape"]


def test_verify_raises_rather_than_returning_false(tiny_snapshot_copy: TinyWorkspace) -> None:
    (tiny_snapshot_copy.snapshot / "extra").write_text("x")
    with pytest.raises(SnapshotMismatch) as raised:
        verify_snapshot(tiny_snapshot_copy.snapshot, tiny_snapshot_copy.manifest)
    assert raised.value.details == ("extra: ./extra",)


# --- parallel hashing --------------------------------------------------------------------------

SMALL_CHUNK = 4096


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("chunk_size", [SMALL_CHUNK, DEFAULT_CHUNK_SIZE])
def test_hash_files_equals_hashlib(tmp_path: Path, workers: int, chunk_size: int) -> None:
    rng = random.Random(workers * 1000 + chunk_size)
    sizes = [0, 1, chunk_size - 1, chunk_size, chunk_size + 1, 3 * chunk_size + 17]
    if chunk_size == SMALL_CHUNK:
        sizes += [rng.randrange(1, 20 * chunk_size) for _ in range(10)]
    expected = {}
    for index, size in enumerate(sizes):
        name = f"d{index % 3}/f{index}.bin"
        (tmp_path / name).parent.mkdir(exist_ok=True)
        data = rng.randbytes(size)
        (tmp_path / name).write_bytes(data)
        expected[name] = (hashlib.sha256(data).hexdigest(), size)
    progress: list[int] = []
    digests = hash_files(
        tmp_path, expected, workers=workers, chunk_size=chunk_size, progress=progress.append
    )
    assert {path: (d.sha256, d.size) for path, d in digests.items()} == expected
    assert sum(progress) == sum(size for _, size in expected.values())


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = random.Random(7).randbytes(100_000)
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=333) == (hashlib.sha256(data).hexdigest(), len(data))


def test_hash_files_raises_on_unreadable(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        hash_files(tmp_path, ["absent"], workers=4)
