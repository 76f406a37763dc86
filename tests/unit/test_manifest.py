"""Manifests: strict parsing, every malformed line named, and ``detserve hash`` as the only writer.

A manifest is coreutils ``sha256sum`` output. A malformed manifest is a failed verification
(exit 1) naming the line; a missing manifest is bad input (exit 2) and is never created.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from detserve.errors import EXIT_INPUT, EXIT_OK, EXIT_VERIFICATION, ManifestError, SnapshotMismatch
from detserve.manifest import ManifestProblem, SnapshotManifest, load_manifest, parse_manifest
from detserve.snapshot import build_manifest

from .committed import (
    TINY_MANIFEST,
    TINY_SNAPSHOT,
    CliRunner,
    TinyWorkspace,
    sha256_hex,
    verify_copy,
)

COMMITTED = TINY_MANIFEST.read_bytes()
LINES = COMMITTED.splitlines(keepends=True)  # 6 lines: config.json ... tokenizer_config.json


def test_committed_manifest_parses_clean() -> None:
    parsed = parse_manifest(COMMITTED)
    assert parsed.problems == ()
    assert parsed.manifest.paths == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert parsed.manifest.to_bytes() == COMMITTED
    assert parsed.sha256 == parsed.manifest.sha256 == sha256_hex(COMMITTED)
    # The revision of the tiny model is the SHA-1 of its manifest (scripts/make_tiny_model.py).
    assert hashlib.sha1(COMMITTED).hexdigest() == TINY_MANIFEST.stem


def _replace_line(number: int, new: bytes) -> bytes:
    lines = list(LINES)
    lines[number - 1] = new
    return b"".join(lines)


def _digest(number: int) -> bytes:
    return LINES[number - 1][:64]


# name -> (manifest bytes, the problem line that must be reported)
MALFORMED: dict[str, tuple[bytes, str]] = {
    "dot-dot": (
        _replace_line(1, _digest(1) + b"  ./../snapshots/config.json\n"),
        "manifest line 1: path escapes the snapshot ('..'): '../snapshots/config.json'",
    ),
    "dot-dot-inside": (
        _replace_line(1, _digest(1) + b"  ./a/../config.json\n"),
        "manifest line 1: path escapes the snapshot ('..')",
    ),
    "absolute-after-dot-slash": (
        _replace_line(2, _digest(2) + b"  .//etc/passwd\n"),
        "manifest line 2: absolute path: '/etc/passwd'",
    ),
    "absolute-without-dot-slash": (
        _replace_line(2, _digest(2) + b"  /etc/passwd\n"),
        "manifest line 2: expected '<sha256>  ./<path>'",
    ),
    "no-dot-slash": (
        _replace_line(1, _digest(1) + b"  config.json\n"),
        "manifest line 1: expected '<sha256>  ./<path>'",
    ),
    "not-normalised": (
        _replace_line(1, _digest(1) + b"  ././config.json\n"),
        "manifest line 1: path is not normalised",
    ),
    "backslash": (
        _replace_line(1, _digest(1) + b"  ./config\\.json\n"),
        "manifest line 1: backslash in path",
    ),
    "duplicate-path": (
        b"".join([*LINES[:3], LINES[2], *LINES[3:]]),
        "manifest line 4: duplicate entry: ./model.safetensors",
    ),
    "duplicate-path-other-digest": (
        b"".join([*LINES[:3], b"0" * 64 + b"  ./model.safetensors\n", *LINES[3:]]),
        "manifest line 4: duplicate entry: ./model.safetensors",
    ),
    "crlf": (COMMITTED.replace(b"\n", b"\r\n"), "manifest line 1: CRLF line ending"),
    "crlf-one-line": (
        _replace_line(5, LINES[4].replace(b"\n", b"\r\n")),
        "manifest line 5: CRLF line ending",
    ),
    "non-hex-digest": (
        _replace_line(3, b"g" + LINES[2][1:]),
        "manifest line 3: digest is not lowercase hex",
    ),
    "short-digest": (
        _replace_line(3, LINES[2][2:]),
        "manifest line 3: digest is 62 characters, expected 64",
    ),
    "long-digest": (
        _replace_line(3, b"ab" + LINES[2]),
        "manifest line 3: digest is 66 characters, expected 64",
    ),
    "uppercase-hex": (
        _replace_line(6, LINES[5][:64].upper() + LINES[5][64:]),
        "manifest line 6: digest is not lowercase hex",
    ),
    "binary-marker": (
        _replace_line(2, _digest(2) + b" *./generation_config.json\n"),
        "manifest line 2: binary-mode marker '*' is not used",
    ),
    "binary-marker-coreutils-style": (
        _replace_line(2, _digest(2) + b" *generation_config.json\n"),
        "manifest line 2: binary-mode marker '*' is not used",
    ),
    "one-space": (
        _replace_line(2, _digest(2) + b" ./generation_config.json\n"),
        "manifest line 2: expected '<sha256>  ./<path>'",
    ),
    "unsorted": (
        b"".join([LINES[1], LINES[0], *LINES[2:]]),
        "manifest line 2: not sorted by path: ./config.json",
    ),
    "empty": (b"", "manifest: empty manifest: it pins nothing"),
    "no-final-newline": (COMMITTED[:-1], "manifest: no final newline (truncated?)"),
    "blank-line": (b"".join([*LINES[:2], b"\n", *LINES[2:]]), "manifest line 3: blank line"),
    "nul-in-path": (
        _replace_line(1, _digest(1) + b"  ./config.json\x00x\n"),
        "manifest line 1: malformed line",
    ),
    "not-utf8-path": (
        _replace_line(1, _digest(1) + b"  ./config\xff.json\n"),
        "manifest line 1: path is not valid UTF-8",
    ),
    "comment-line": (
        b"# detserve manifest\n" + COMMITTED,
        "manifest line 1: digest is 1 characters, expected 64",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED), ids=str)
def test_malformed_manifest_exits_1_naming_the_line(
    case: str, tiny_snapshot_copy: TinyWorkspace, cli: CliRunner
) -> None:
    data, expected = MALFORMED[case]
    tiny_snapshot_copy.manifest.write_bytes(data)
    result = verify_copy(cli, tiny_snapshot_copy)
    assert result.code == EXIT_VERIFICATION, result.text
    assert f"  {expected}" in result.err, result.err
    assert parse_manifest(data).problems, "the parser must see the problem too"
    with pytest.raises(SnapshotMismatch):
        load_manifest(tiny_snapshot_copy.manifest)
    assert tiny_snapshot_copy.manifest.read_bytes() == data, "verify never rewrites a manifest"


def test_every_crlf_line_is_reported() -> None:
    parsed = parse_manifest(COMMITTED.replace(b"\n", b"\r\n"))
    assert [p.line for p in parsed.problems] == [1, 2, 3, 4, 5, 6]
    assert parsed.manifest.digests == {}


def test_problems_sort_by_line() -> None:
    problems = [ManifestProblem(3, "b"), ManifestProblem(0, "z"), ManifestProblem(1, "a")]
    assert [str(p) for p in sorted(problems)] == ["manifest: z", "line 1: a", "line 3: b"]


def test_manifest_of_another_revision_fails_naming_the_file(
    tiny_snapshot_copy: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    # Another revision of the model: the same files, one of them different.
    other = tmp_path / "other-revision"
    shutil.copytree(TINY_SNAPSHOT, other, symlinks=False)
    other_config = b'{"eos_token_id": 3}\n'
    (other / "generation_config.json").write_bytes(other_config)
    other_manifest = tmp_path / "other.sha256"
    assert cli("hash", "--snapshot", other, "--output", other_manifest).code == EXIT_OK
    result = cli("verify", "--snapshot", tiny_snapshot_copy.snapshot, "--manifest", other_manifest)
    assert result.code == EXIT_VERIFICATION
    changed = [line for line in result.err.splitlines() if line.startswith("  ")]
    assert changed == [
        f"  changed: ./generation_config.json expected {sha256_hex(other_config)} "
        f"actual {_digest(2).decode()}"
    ]


def test_manifest_of_another_snapshot_lists_missing_and_extra(
    tiny_snapshot_copy: TinyWorkspace, cli: CliRunner
) -> None:
    bundle_pin = b"0" * 64 + b"  ./bundle.json\n" + b"1" * 64 + b"  ./prompts.jsonl\n"
    tiny_snapshot_copy.manifest.write_bytes(bundle_pin)
    result = verify_copy(cli, tiny_snapshot_copy)
    assert result.code == EXIT_VERIFICATION
    assert "  missing: ./bundle.json\n  missing: ./prompts.jsonl\n  extra: ./config.json" in (
        result.err
    )


def test_missing_manifest_exits_2_and_creates_nothing(
    tiny_snapshot_copy: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    absent = tmp_path / "nowhere" / "absent.sha256"
    result = cli("verify", "--snapshot", tiny_snapshot_copy.snapshot, "--manifest", absent)
    assert result.code == EXIT_INPUT, result.text
    assert f"manifest not found: {absent}" in result.err
    assert "never creates a manifest implicitly" in result.err
    # the hint names hash's option as it is spelled now, not the deprecated --output
    assert "`detserve hash ... --manifest-output PATH`" in " ".join(result.err.split())
    assert not absent.parent.exists()


def test_missing_manifest_of_a_profile_exits_2_and_creates_nothing(
    tiny_workspace: TinyWorkspace, cli: CliRunner
) -> None:
    tiny_workspace.manifest.unlink()
    before = sorted(p.name for p in tiny_workspace.manifest.parent.iterdir())
    result = cli("verify", "--config", tiny_workspace.config)
    assert result.code == EXIT_INPUT, result.text
    assert "manifest not found" in result.err
    assert sorted(p.name for p in tiny_workspace.manifest.parent.iterdir()) == before
    assert not tiny_workspace.manifest.exists()


def test_manifest_is_a_directory_exits_2(tiny_snapshot_copy: TinyWorkspace, cli: CliRunner) -> None:
    result = cli(
        "verify", "--snapshot", tiny_snapshot_copy.snapshot, "--manifest", tiny_snapshot_copy.root
    )
    assert result.code == EXIT_INPUT


def test_snapshot_manifest_refuses_unsafe_paths() -> None:
    digest = "a" * 64
    for path in ("../x", "/x", "a//b", "a/./b", "a/", "a\\b", "", "a\nb", "a\rb", "a\x00b"):
        with pytest.raises(ManifestError):
            SnapshotManifest({path: digest})
    with pytest.raises(ManifestError):
        SnapshotManifest({"x": "A" * 64})
    with pytest.raises(ManifestError):
        SnapshotManifest({"x": "a" * 63})


def test_to_bytes_sorts_by_path_bytes() -> None:
    digest = "c" * 64
    manifest = SnapshotManifest(dict.fromkeys(["ü", "sub/b", "sub.txt", "Z", "a"], digest))
    assert manifest.paths == ["Z", "a", "sub.txt", "sub/b", "ü"]
    assert parse_manifest(manifest.to_bytes()).problems == ()


# --- detserve hash -----------------------------------------------------------------------------


def test_hash_reproduces_the_committed_manifest(
    tiny_snapshot_copy: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    for workers in ("1", "4"):
        output = tmp_path / f"w{workers}.sha256"
        result = cli(
            "hash", "--snapshot", tiny_snapshot_copy.snapshot, "--output", output,
            "--workers", workers,
        )  # fmt: skip
        assert result.code == EXIT_OK, result.text
        assert output.read_bytes() == COMMITTED
        assert f"manifest sha256 {sha256_hex(COMMITTED)}" in result.out


def test_hash_of_profile_reproduces_the_committed_manifest(
    tiny_workspace: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    output = tmp_path / "out.sha256"
    result = cli("hash", "--config", tiny_workspace.config, "--output", output, "--json")
    assert result.code == EXIT_OK, result.text
    assert output.read_bytes() == COMMITTED
    assert '"files":6' in result.out


def test_hash_refuses_to_overwrite_without_force(
    tiny_snapshot_copy: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    output = tmp_path / "existing.sha256"
    output.write_bytes(b"precious\n")
    refused = cli("hash", "--snapshot", tiny_snapshot_copy.snapshot, "--output", output)
    assert refused.code == EXIT_INPUT, refused.text
    assert f"refusing to overwrite {output}" in refused.err
    assert output.read_bytes() == b"precious\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "repo") == ["existing.sha256"]
    forced = cli("hash", "--snapshot", tiny_snapshot_copy.snapshot, "--output", output, "--force")
    assert forced.code == EXIT_OK, forced.text
    assert output.read_bytes() == COMMITTED


@pytest.mark.parametrize(
    "make_unsafe",
    [
        pytest.param(lambda s: s / "config.json", id="escaping-symlink"),
        pytest.param(lambda s: s / "new-link", id="added-escaping-symlink"),
    ],
)
def test_hash_refuses_an_escaping_symlink(
    make_unsafe: Callable[[Path], Path],
    tiny_snapshot_copy: TinyWorkspace,
    tmp_path: Path,
    cli: CliRunner,
) -> None:
    link = make_unsafe(tiny_snapshot_copy.snapshot)
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/passwd")
    output = tmp_path / "out.sha256"
    result = cli("hash", "--snapshot", tiny_snapshot_copy.snapshot, "--output", output)
    assert result.code == EXIT_INPUT, result.text
    assert f"unsafe: ./{link.name} symlink resolves outside the snapshot" in result.err
    assert not output.exists()
    assert not list(tmp_path.glob(".out.sha256.*")), "no partial file is left behind"


def test_hash_refuses_fifo_and_dangling_link(tmp_path: Path, cli: CliRunner) -> None:
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "a.txt").write_text("a")
    (snapshot / "dangling").symlink_to("nowhere")
    os.mkfifo(snapshot / "pipe")
    result = cli("hash", "--snapshot", snapshot, "--output", tmp_path / "out.sha256")
    assert result.code == EXIT_INPUT
    assert "unsafe: ./dangling " in result.err
    assert "unsafe: ./pipe not a regular file" in result.err


def test_hash_refuses_a_name_a_manifest_cannot_hold(tmp_path: Path, cli: CliRunner) -> None:
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "a\nb").write_text("x")
    (snapshot / "ok").write_text("y")
    output = tmp_path / "out.sha256"
    result = cli("hash", "--snapshot", snapshot, "--output", output)
    assert result.code == EXIT_INPUT, result.text
    assert "unsafe: ./a\\nb name cannot be written in a manifest" in result.err
    assert not output.exists()


def test_hash_refuses_a_name_that_is_not_utf8(tmp_path: Path, cli: CliRunner) -> None:
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    try:
        (snapshot / b"caf\xe9".decode("utf-8", "surrogateescape")).write_text("x")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    output = tmp_path / "out.sha256"
    result = cli("hash", "--snapshot", snapshot, "--output", output)
    assert result.code == EXIT_INPUT, result.text
    assert "unsafe: ./caf\\udce9 name cannot be written in a manifest" in result.err
    assert not output.exists()


def test_hash_refuses_an_empty_directory(tmp_path: Path, cli: CliRunner) -> None:
    (tmp_path / "empty").mkdir()
    result = cli("hash", "--snapshot", tmp_path / "empty", "--output", tmp_path / "out.sha256")
    assert result.code == EXIT_INPUT
    assert "it has no files" in result.err


def test_hash_needs_a_source(tmp_path: Path, cli: CliRunner) -> None:
    result = cli("hash", "--output", tmp_path / "out.sha256")
    assert result.code == EXIT_INPUT
    assert "give --config PROFILE, or --snapshot DIR" in result.err


def test_hash_output_is_coreutils_output(tmp_path: Path, cli: CliRunner) -> None:
    tree = tmp_path / "tree"
    for name, content in {
        "a.txt": b"a",
        "Z": b"",
        "sub.txt": b"s",
        "sub/b.bin": bytes(range(256)),
        "sub/deeper/c": b"c" * 10_000,
        "ü/ü.json": "ü".encode(),
        "with space": b"sp",
    }.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(content)
    output = tmp_path / "tree.sha256"
    assert cli("hash", "--snapshot", tree, "--output", output).code == EXIT_OK
    coreutils = subprocess.run(
        "find . -type f | LC_ALL=C sort | xargs -d '\\n' sha256sum",
        shell=True,
        cwd=tree,
        capture_output=True,
        check=True,
    ).stdout
    assert output.read_bytes() == coreutils
    check = subprocess.run(
        ["sha256sum", "--strict", "-c", str(output)], cwd=tree, capture_output=True, check=False
    )
    assert check.returncode == 0
    assert build_manifest(tree, workers=3).to_bytes() == coreutils
