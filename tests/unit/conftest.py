"""Fixtures shared by the unit tests: the committed tiny model, copies of it, and the CLI.

Tests never touch the committed artifacts: anything a test changes is a copy under ``tmp_path``,
laid out like the repository (``configs/``, ``artifacts/hf-cache``, the reference prompt bundle,
``manifests/``) so that a copied profile's relative paths resolve to the copies.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from detserve.cli import main

from .committed import (
    BUNDLE_DIR,
    BUNDLE_PIN,
    TINY_CONFIG,
    TINY_MANIFEST,
    TINY_MODEL_DIR,
    TINY_MODEL_FOLDER,
    TINY_REVISION,
    CliResult,
    CliRunner,
    TinyWorkspace,
)
from .gateway_rig import Fixture, GatewayRig, StreamingFakeVllm, running_gateway
from .signing_rig import KeyPair, publish_model, sign_with_key


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """Run ``detserve ARGS...`` in-process; return its exit status, stdout and stderr."""

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()  # drop anything printed before this command
        with pytest.raises(SystemExit) as exited:
            main([str(arg) for arg in args])
        captured = capsys.readouterr()
        code = exited.value.code
        return CliResult(
            code=code if isinstance(code, int) else 0, out=captured.out, err=captured.err
        )

    return run


@pytest.fixture
def tiny_workspace(tmp_path: Path) -> TinyWorkspace:
    return copy_tiny_workspace(tmp_path)


def copy_tiny_workspace(tmp_path: Path) -> TinyWorkspace:
    """A copy of the tiny model, its manifest, its profile and bundle under ``tmp_path/repo``
    (for a fixture of a wider scope than a test's)."""
    root = tmp_path / "repo"
    config = root / "configs" / "tiny-cpu.json"
    config.parent.mkdir(parents=True)
    shutil.copyfile(TINY_CONFIG, config)
    model_dir = root / "artifacts" / "hf-cache" / "hub" / TINY_MODEL_FOLDER
    # symlinks=True keeps the snapshot's relative links, so they point at the copied blobs.
    shutil.copytree(TINY_MODEL_DIR, model_dir, symlinks=True)
    manifest = root / "manifests" / "tiny-cpu" / TINY_MANIFEST.name
    manifest.parent.mkdir(parents=True)
    shutil.copyfile(TINY_MANIFEST, manifest)
    # the bundle the profile names (prompts.bundle, prompts.manifest), where it names it
    shutil.copytree(BUNDLE_DIR, root / "artifacts" / BUNDLE_DIR.name)
    (root / "manifests" / BUNDLE_PIN.parent.name).mkdir()
    shutil.copyfile(BUNDLE_PIN, root / "manifests" / BUNDLE_PIN.parent.name / BUNDLE_PIN.name)
    workspace = TinyWorkspace(
        root=root,
        config=config,
        model_dir=model_dir,
        snapshot=model_dir / "snapshots" / TINY_REVISION,
        manifest=manifest,
    )
    for entry in workspace.snapshot.iterdir():
        assert entry.is_symlink(), f"{entry}: the copy must keep the HF cache's symlinks"
        assert workspace.blob_of(entry.name).is_relative_to(workspace.blobs)
    return workspace


@pytest.fixture
def tiny_snapshot_copy(tiny_workspace: TinyWorkspace) -> TinyWorkspace:
    """The same workspace; the name says what a test uses it for."""
    return tiny_workspace


# --- a publisher's model signature (test_model_signature, test_signed_snapshot) ------------------


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    """The publisher's elliptic-curve key pair."""
    return KeyPair.make(tmp_path / "keys", "publisher")


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """The tiny model as its publisher's repository holds it (plain files)."""
    return publish_model(tmp_path / "publisher" / "tiny-llama")


@pytest.fixture
def signature(tmp_path: Path, published: Path, keys: KeyPair) -> Path:
    """``published`` signed with ``keys`` by model_signing."""
    return sign_with_key(published, tmp_path / "publisher" / "model.sig", keys)


# --- a gateway in front of a streaming fake vLLM (the test_gateway* files) ----------------------


@pytest.fixture
def fixture(tiny_workspace: TinyWorkspace, tmp_path: Path) -> Fixture:
    """What the gateway is built from; a test's own ``rig`` may set its options or limits."""
    return Fixture(workspace=tiny_workspace, transcripts=tmp_path / "transcripts")


@pytest.fixture
def fake() -> StreamingFakeVllm:
    return StreamingFakeVllm()


@pytest.fixture
def rig(fixture: Fixture, fake: StreamingFakeVllm) -> Iterator[GatewayRig]:
    """The gateway with default options, serving for the test."""
    yield from running_gateway(fixture, fake)
