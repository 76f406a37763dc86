"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from detserve.errors import UsageError

T = TypeVar("T")

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        help="Profile file, e.g. configs/tiny-cpu.json.",
        dir_okay=False,
    ),
]
OptionalConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Profile file, e.g. configs/tiny-cpu.json.", dir_okay=False
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="Files hashed at once (default: one per usable core)."),
]

DockerHostOption = Annotated[
    str | None,
    typer.Option(
        "--docker-host",
        metavar="URL",
        help=(
            "The Docker engine to use, e.g. unix:///run/detserve-node2/docker.sock, "
            "tcp://host:2376 or ssh://user@host (default: DOCKER_HOST, else the current Docker "
            "context, else the local socket)."
        ),
    ),
]

BundleOption = Annotated[
    Path | None,
    typer.Option(
        "--bundle",
        file_okay=False,
        help="Prompt bundle directory (default: the profile's prompts.bundle).",
    ),
]
BundlePinOption = Annotated[
    Path | None,
    typer.Option(
        "--bundle-pin",
        dir_okay=False,
        help="The bundle's pinned manifest (default: the profile's prompts.manifest).",
    ),
]

ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]

FullVerifyOption = Annotated[
    bool,
    typer.Option(
        "--full-verify",
        help="Hash every byte of the snapshot even where the record of a full pass in this "
        "container lifetime vouches for it (docs/threat-model.md).",
    ),
]

# The sampling options of `sample` and `check`: the same names, bounds and help in both.
NPromptsOption = Annotated[
    int | None,
    typer.Option("--n-prompts", min=1, help="First N prompts of the bundle (default: all)."),
]
MaxTokensOption = Annotated[
    int | None,
    typer.Option(
        "--max-tokens", min=1, help="Output tokens per prompt (default: sampling.max_tokens)."
    ),
]


def logprobs_option(help: str) -> Any:
    """``--logprobs N``; each command says what it does with them (``check``'s tier 2 asks for
    them by default, ``sample`` only records them)."""
    return typer.Option("--logprobs", min=0, help=help)


def renamed(value: T | None, legacy: T | None, *, name: str, old: str) -> T | None:
    """The value of an option that was renamed; the old spelling still works, with a warning.

    Outputs are named for what they are (``--report-output``, ``--sidecar-output``,
    ``--manifest-output``, ``--profile-output``); ``--output`` meant a different thing in each
    command, and stays as a deprecated alias.
    """
    if legacy is None:
        return value
    if value is not None:
        raise UsageError(f"{old} is the old spelling of {name}: give one of them")
    from detserve.cli.output import say

    say(f"detserve: warning: {old} is deprecated here; use {name}")
    return legacy


def legacy_output_option(name: str) -> Any:
    """The hidden, deprecated ``--output``/``-o`` spelling of ``name``."""
    return typer.Option("--output", "-o", hidden=True, dir_okay=False, help=f"Deprecated: {name}.")
