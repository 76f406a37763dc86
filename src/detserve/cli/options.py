"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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

BundleOption = Annotated[
    Path, typer.Option("--bundle", file_okay=False, help="Prompt bundle directory.")
]
BundlePinOption = Annotated[
    Path, typer.Option("--bundle-pin", dir_okay=False, help="The bundle's pinned manifest.")
]
