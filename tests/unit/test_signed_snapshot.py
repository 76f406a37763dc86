"""A manifest derived from a publisher's model signature, and a snapshot checked against both.

The publisher signs the tiny model (plain files) with model_signing; detserve checks a copy of the
Hugging Face cache (links into ``blobs/``) against it. Every failure writes no manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from detserve.errors import EXIT_INPUT, EXIT_OK, EXIT_VERIFICATION

from .committed import TINY_MANIFEST, CliRunner, TinyWorkspace, sha256_hex
from .signing_rig import (
    KeyPair,
    assert_refused,
    details,
    hash_signed,
    sign_with_key,
    verify_signed,
)


def flip_byte(ws: TinyWorkspace, name: str) -> None:
    blob = ws.blob_of(name)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))


# --- hash --model-signature ---------------------------------------------------------------------


def test_the_derived_manifest_is_the_committed_one(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, tmp_path: Path
) -> None:
    output = tmp_path / "derived.sha256"
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_OK, result.text
    assert output.read_bytes() == TINY_MANIFEST.read_bytes()
    assert f"signed by public key sha256:{keys.fingerprint}" in result.err
    assert "6 files (files, sha256)" in result.err


def test_hash_json_names_the_signature(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, tmp_path: Path
) -> None:
    output = tmp_path / "derived.sha256"
    result = hash_signed(
        cli, tiny_workspace, signature, "--public-key", keys.public, "--json", output=output
    )
    assert result.code == EXIT_OK, result.text
    signed = json.loads(result.out)["signature"]
    assert signed["signer"] == f"public key sha256:{keys.fingerprint}"
    assert signed["sha256"] == sha256_hex(signature.read_bytes())
    assert (signed["method"], signed["hash_type"], signed["files"]) == ("files", "sha256", 6)


def test_a_changed_byte_is_exit_1_and_writes_nothing(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, tmp_path: Path
) -> None:
    flip_byte(tiny_workspace, "model.safetensors")
    output = tmp_path / "derived.sha256"
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_VERIFICATION, result.text
    assert "is not the model signed by public key sha256:" in result.err
    [line] = details(result)
    actual = sha256_hex(tiny_workspace.blob_of("model.safetensors").read_bytes())
    assert line == (
        "not as signed: ./model.safetensors sha256 signed "
        f"95681410b138db7a6994499d919592be7130594c34ae1eb7e23e9f9d256088f5 actual {actual}"
    )
    assert not output.exists()


def test_a_signed_file_that_is_missing_is_exit_1(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, tmp_path: Path
) -> None:
    (tiny_workspace.snapshot / "tokenizer.json").unlink()
    (tiny_workspace.snapshot / "config.json").unlink()
    output = tmp_path / "derived.sha256"
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_VERIFICATION, result.text
    assert details(result) == [
        "signed but missing: ./config.json",
        "signed but missing: ./tokenizer.json",
    ]
    assert not output.exists()


@pytest.mark.parametrize(
    ("added", "why"),
    [
        ("notes.txt", ""),
        ("sub/extra.bin", ""),
        (".gitattributes", " (the signer ignored .gitattributes)"),
        (".git/config", " (the signer ignored .git)"),
    ],
)
def test_a_file_the_signature_does_not_cover_is_exit_1(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    signature: Path,
    keys: KeyPair,
    tmp_path: Path,
    added: str,
    why: str,
) -> None:
    extra = tiny_workspace.snapshot / added
    extra.parent.mkdir(parents=True, exist_ok=True)
    extra.write_bytes(b"not signed\n")
    output = tmp_path / "derived.sha256"
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_VERIFICATION, result.text
    assert details(result) == [f"not signed: ./{added}{why}"]
    assert "download every signed file" in result.err
    assert not output.exists()


def test_every_difference_is_named_at_once(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, tmp_path: Path
) -> None:
    flip_byte(tiny_workspace, "config.json")
    (tiny_workspace.snapshot / "tokenizer.json").unlink()
    (tiny_workspace.snapshot / "added.txt").write_text("x", encoding="utf-8")
    output = tmp_path / "derived.sha256"
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_VERIFICATION, result.text
    kinds = [line.split(": ./")[0] for line in details(result)]
    assert kinds == ["not signed", "signed but missing", "not as signed"]


def test_a_link_out_of_the_model_is_refused_whatever_the_signer_allowed(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.json"
    outside.write_bytes(tiny_workspace.blob_of("config.json").read_bytes())
    link = tiny_workspace.snapshot / "config.json"
    link.unlink()
    link.symlink_to(outside)  # the signed bytes, but from outside the model
    output = tmp_path / "derived.sha256"
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert_refused(
        result, EXIT_INPUT, output, "unsafe: ./config.json symlink resolves outside the snapshot"
    )


def test_the_signature_file_inside_the_snapshot_is_pinned(
    tiny_workspace: TinyWorkspace, cli: CliRunner, published: Path, keys: KeyPair, tmp_path: Path
) -> None:
    # The publisher ships model.sig in the repository; the signer left it out, as its CLI does.
    signature = sign_with_key(published, published / "model.sig", keys, ignore=("model.sig",))
    inside = tiny_workspace.snapshot / "model.sig"
    inside.write_bytes(signature.read_bytes())
    output = tmp_path / "derived.sha256"
    result = hash_signed(cli, tiny_workspace, inside, "--public-key", keys.public, output=output)
    assert result.code == EXIT_OK, result.text
    lines = output.read_text(encoding="utf-8").splitlines()
    assert f"{sha256_hex(signature.read_bytes())}  ./model.sig" in lines
    assert len(lines) == 7
    verified = verify_signed(
        cli, tiny_workspace, inside, "--public-key", keys.public, manifest=output
    )
    assert verified.code == EXIT_OK, verified.text


def test_a_signature_file_in_the_snapshot_but_not_the_one_given_is_not_signed(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, tmp_path: Path
) -> None:
    (tiny_workspace.snapshot / "model.sig").write_bytes(signature.read_bytes())
    output = tmp_path / "derived.sha256"
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_VERIFICATION, result.text
    assert details(result) == ["not signed: ./model.sig"]


# --- shards and other algorithms ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "named", "shard_size"),
    [
        ("sha256", "sha256", 100_000),
        ("blake2", "blake2b", 65_536),
        ("blake3", "blake3", None),
        ("blake2", "blake2b", None),
    ],
)
def test_other_serializations_derive_the_same_manifest(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    published: Path,
    keys: KeyPair,
    tmp_path: Path,
    algorithm: str,
    named: str,
    shard_size: int | None,
) -> None:
    signature = sign_with_key(
        published, tmp_path / "model.sig", keys, algorithm=algorithm, shard_size=shard_size
    )
    output = tmp_path / "derived.sha256"
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_OK, result.text
    assert output.read_bytes() == TINY_MANIFEST.read_bytes()
    verified = verify_signed(
        cli, tiny_workspace, signature, "--public-key", keys.public, manifest=output
    )
    assert verified.code == EXIT_OK, verified.text

    flip_byte(tiny_workspace, "model.safetensors")
    tampered = hash_signed(
        cli, tiny_workspace, signature, "--public-key", keys.public, output=tmp_path / "t.sha256"
    )
    assert tampered.code == EXIT_VERIFICATION, tampered.text
    [line] = details(tampered)
    assert line.startswith(f"not as signed: ./model.safetensors {'shard ' if shard_size else ''}")
    assert f" {named} signed " in line


def test_a_sharded_signature_names_the_changed_shard(
    tiny_workspace: TinyWorkspace, cli: CliRunner, published: Path, keys: KeyPair, tmp_path: Path
) -> None:
    signature = sign_with_key(published, tmp_path / "model.sig", keys, shard_size=100_000)
    blob = tiny_workspace.blob_of("model.safetensors")
    data = bytearray(blob.read_bytes())
    data[250_000] ^= 0x01
    blob.write_bytes(bytes(data))
    result = hash_signed(
        cli, tiny_workspace, signature, "--public-key", keys.public, output=tmp_path / "o"
    )
    assert result.code == EXIT_VERIFICATION, result.text
    [line] = details(result)
    assert line.startswith("not as signed: ./model.safetensors shard 200000:300000 sha256 signed")


def test_a_sharded_file_of_another_size_is_named_by_size(
    tiny_workspace: TinyWorkspace, cli: CliRunner, published: Path, keys: KeyPair, tmp_path: Path
) -> None:
    signature = sign_with_key(published, tmp_path / "model.sig", keys, shard_size=100_000)
    blob = tiny_workspace.blob_of("model.safetensors")
    size = blob.stat().st_size
    with blob.open("ab") as handle:
        handle.write(b"\0" * 7)
    result = hash_signed(
        cli, tiny_workspace, signature, "--public-key", keys.public, output=tmp_path / "o"
    )
    assert result.code == EXIT_VERIFICATION, result.text
    assert details(result) == [
        f"not as signed: ./model.safetensors size signed {size} actual {size + 7}"
    ]


def test_an_empty_file_cannot_be_covered_by_a_sharded_signature(
    tiny_workspace: TinyWorkspace, cli: CliRunner, published: Path, keys: KeyPair, tmp_path: Path
) -> None:
    (published / "empty.txt").write_bytes(b"")
    signature = sign_with_key(published, tmp_path / "model.sig", keys, shard_size=100_000)
    (tiny_workspace.snapshot / "empty.txt").write_bytes(b"")
    result = hash_signed(
        cli, tiny_workspace, signature, "--public-key", keys.public, output=tmp_path / "o"
    )
    assert result.code == EXIT_VERIFICATION, result.text
    assert details(result) == [
        "not signed: ./empty.txt (empty: a sharded signature cannot list an empty file)"
    ]


def test_an_empty_file_is_covered_by_a_whole_file_signature(
    tiny_workspace: TinyWorkspace, cli: CliRunner, published: Path, keys: KeyPair, tmp_path: Path
) -> None:
    (published / "empty.txt").write_bytes(b"")
    signature = sign_with_key(published, tmp_path / "model.sig", keys)
    (tiny_workspace.snapshot / "empty.txt").write_bytes(b"")
    output = tmp_path / "o"
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_OK, result.text
    assert f"{sha256_hex(b'')}  ./empty.txt" in output.read_text(encoding="utf-8").splitlines()


# --- verify --model-signature -----------------------------------------------------------------


def test_verify_checks_the_snapshot_the_manifest_and_the_signature(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair
) -> None:
    result = verify_signed(
        cli,
        tiny_workspace,
        signature,
        "--public-key",
        keys.public,
        "--json",
        manifest=tiny_workspace.manifest,
    )
    assert result.code == EXIT_OK, result.text
    report = json.loads(result.out)
    assert report["files"] == 6
    assert report["signature"]["signer"] == f"public key sha256:{keys.fingerprint}"


def test_verify_fails_when_the_manifest_follows_a_tampered_snapshot(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, tmp_path: Path
) -> None:
    # Someone tampered with a file and re-made the manifest from it: manifest and disk agree,
    # the signature does not.
    flip_byte(tiny_workspace, "config.json")
    rehashed = tmp_path / "rehashed.sha256"
    assert (
        cli("hash", "--snapshot", tiny_workspace.snapshot, "--manifest-output", rehashed).code == 0
    )
    assert cli("verify", "--snapshot", tiny_workspace.snapshot, "--manifest", rehashed).code == 0
    result = verify_signed(
        cli, tiny_workspace, signature, "--public-key", keys.public, manifest=rehashed
    )
    assert result.code == EXIT_VERIFICATION, result.text
    lines = details(result)
    assert [line.split(" ")[0] for line in lines] == ["not", "pinned"]
    assert lines[0].startswith("not as signed: ./config.json sha256 signed b04a2867")
    assert lines[1].startswith("pinned and signed differ: ./config.json manifest ")


def test_verify_fails_when_manifest_and_signature_list_other_files(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, tmp_path: Path
) -> None:
    # Disk and manifest agree (one file fewer, one more), and neither is what was signed.
    (tiny_workspace.snapshot / "generation_config.json").unlink()
    (tiny_workspace.snapshot / "extra.txt").write_text("x", encoding="utf-8")
    rehashed = tmp_path / "rehashed.sha256"
    assert (
        cli("hash", "--snapshot", tiny_workspace.snapshot, "--manifest-output", rehashed).code == 0
    )
    result = verify_signed(
        cli, tiny_workspace, signature, "--public-key", keys.public, manifest=rehashed
    )
    assert result.code == EXIT_VERIFICATION, result.text
    assert details(result) == [
        "not signed: ./extra.txt",
        "signed but missing: ./generation_config.json",
        "pinned but not signed: ./extra.txt",
        "signed but not pinned: ./generation_config.json",
    ]


def test_verify_fails_on_a_stale_manifest_of_a_signed_snapshot(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair
) -> None:
    # Disk is exactly what was signed; the committed manifest pins something else.
    lines = tiny_workspace.manifest.read_text(encoding="utf-8").splitlines()
    lines[0] = "0" * 64 + lines[0][64:]
    tiny_workspace.manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = verify_signed(
        cli,
        tiny_workspace,
        signature,
        "--public-key",
        keys.public,
        manifest=tiny_workspace.manifest,
    )
    assert result.code == EXIT_VERIFICATION, result.text
    found = details(result)
    assert found[0].startswith("changed: ./config.json expected 0000")
    assert found[1].startswith("pinned and signed differ: ./config.json manifest 0000")
    assert len(found) == 2


def test_verify_reads_every_file_once(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    signature: Path,
    keys: KeyPair,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from detserve import fileio

    opened: list[str] = []
    original = fileio.open_regular

    def counting(path: Path) -> tuple[int, os.stat_result]:
        opened.append(Path(path).name)
        return original(path)

    monkeypatch.setattr("detserve.signed_snapshot.open_regular", counting)
    result = verify_signed(
        cli,
        tiny_workspace,
        signature,
        "--public-key",
        keys.public,
        manifest=tiny_workspace.manifest,
    )
    assert result.code == EXIT_OK, result.text
    assert sorted(opened) == sorted(p.name for p in tiny_workspace.snapshot.iterdir())


def test_a_signature_in_the_snapshot_changed_after_it_verified_is_a_race(
    tiny_workspace: TinyWorkspace, published: Path, keys: KeyPair, tmp_path: Path
) -> None:
    from detserve.errors import SnapshotChanged
    from detserve.model_signature import SignatureTrust, verify_model_signature
    from detserve.signed_snapshot import derive_manifest

    signature = sign_with_key(published, published / "model.sig", keys, ignore=("model.sig",))
    inside = tiny_workspace.snapshot / "model.sig"
    inside.write_bytes(signature.read_bytes())
    signed = verify_model_signature(inside, SignatureTrust.of(keys.public))
    inside.write_bytes(signature.read_bytes() + b" ")  # swapped between its check and the hash
    with pytest.raises(SnapshotChanged, match=r"the model signature \./model\.sig is not the file"):
        derive_manifest(tiny_workspace.snapshot, signed)
