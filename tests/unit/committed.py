"""Where the committed artifacts the unit tests check live, and small helpers shared by tests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / "configs" / "tiny-cpu.json"
TINY_REVISION = "46e57beb165a224b80456c14f6813993c9347126"
TINY_MODEL_FOLDER = "models--detserve--tiny-llama"
TINY_MODEL_DIR = REPO_ROOT / "artifacts" / "hf-cache" / "hub" / TINY_MODEL_FOLDER
TINY_SNAPSHOT = TINY_MODEL_DIR / "snapshots" / TINY_REVISION
TINY_MANIFEST = REPO_ROOT / "manifests" / "tiny-cpu" / f"{TINY_REVISION}.sha256"
BUNDLE_DIR = REPO_ROOT / "artifacts" / "reference_prompts"
BUNDLE_PIN = REPO_ROOT / "manifests" / "reference_prompts" / "reference_prompts.sha256"
DATASET_SOURCE = REPO_ROOT / "artifacts" / "datasets" / "reference_prompts.source.jsonl"
SCHEMA_FILE = REPO_ROOT / "docs" / "profile.schema.json"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CliResult:
    """What one ``detserve`` command did: its exit status, stdout and stderr."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


CliRunner = Callable[..., CliResult]


@dataclass(frozen=True)
class TinyWorkspace:
    """A copy of the tiny model, its manifest and its profile, in the repository's layout."""

    root: Path
    config: Path
    model_dir: Path
    snapshot: Path
    manifest: Path

    @property
    def blobs(self) -> Path:
        return self.model_dir / "blobs"

    def blob_of(self, name: str) -> Path:
        """The blob file a snapshot entry links to (writing it changes what the snapshot serves)."""
        return (self.snapshot / name).resolve()


def verify_copy(cli: CliRunner, ws: TinyWorkspace, *extra: str) -> CliResult:
    """``detserve verify`` of a workspace's snapshot against its manifest, as a user runs it."""
    return cli("verify", "--snapshot", ws.snapshot, "--manifest", ws.manifest, *extra)


def parse_command_line(words: list[str]) -> None:
    """Parse ``detserve WORDS`` with the real CLI's parser (options, types, bounds); run nothing.

    Typer may carry its own copy of click, so the parser is reached through typer's objects."""
    import typer
    import typer.main

    from detserve.cli.app import _register

    command: Any = typer.main.get_command(_register(words))
    context = typer.Context(command, info_name="detserve")
    name, rest = "detserve", list(words)
    while hasattr(command, "get_command"):  # a group: the next word names its sub-command
        name, rest = rest[0], rest[1:]
        command = command.get_command(context, name)
        assert command is not None, f"no command {name}"
        context = typer.Context(command, info_name=name, parent=context)
    command.make_context(name, rest, parent=context.parent)
