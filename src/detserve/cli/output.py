"""How the CLI talks to people and machines: results on stdout, the rest on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from detserve.canonical import atomic_write_bytes, canonical_json

stdout = Console(soft_wrap=True, highlight=False)
stderr = Console(stderr=True, soft_wrap=True, highlight=False)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout instead of text.")
]


def emit_json(value: Any) -> None:
    sys.stdout.write(canonical_json(value) + "\n")
    sys.stdout.flush()


def write_report(path: Path, report: dict[str, object]) -> None:
    """A JSON report for people and machines (indented, sorted keys), written atomically."""
    text = json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def say(message: str) -> None:
    """A progress or diagnostic line for people, on stderr."""
    stderr.print(message, markup=False)


def result(message: str) -> None:
    """A result line, on stdout."""
    stdout.print(message, markup=False)


class ByteProgress:
    """A thread-safe bytes progress bar (hashing): bytes done, throughput, time left."""

    def __init__(self, progress: Progress, description: str) -> None:
        self._progress = progress
        self._task = progress.add_task(description, total=None)

    def set_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def advance(self, count: int) -> None:
        self._progress.advance(self._task, count)


def byte_columns() -> tuple[ProgressColumn, ...]:
    """The columns of the hashing bar: what, bar, bytes done of total, throughput, time left."""
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )


@contextmanager
def byte_progress(description: str) -> Iterator[ByteProgress]:
    with Progress(
        *byte_columns(), console=stderr, transient=True, refresh_per_second=4
    ) as progress:
        yield ByteProgress(progress, description)


@contextmanager
def count_progress(description: str, total: int | None) -> Iterator[tuple[Progress, Any]]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=True, refresh_per_second=2) as progress:
        task = progress.add_task(description, total=total, rate="")
        yield progress, task
