"""How the CLI talks to people and machines: results on stdout, the rest on stderr.

Every string printed here may hold text received from outside (a file, a container, a server, an
envelope, a path), so nothing reaches a terminal raw: :func:`result`, :func:`say` and
:func:`say_lines` show each line :func:`~detserve.printable.printable` (controls escaped, a
value's newline shown as ``\\n``); :func:`emit_json` escapes the same characters in JSON's own
spelling; progress descriptions are escaped where a task is named, and rendered without markup.
The consoles interpret neither rich markup nor emoji codes, so a received ``[bold]VERIFIED[/]``
or ``:white_check_mark:`` is shown as the text it is. Library log records and warnings are
escaped too (:func:`escape_library_output`): uvicorn, httpx or the Docker SDK may quote what
they received.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from detserve.canonical import canonical_json
from detserve.errors import EXIT_ENVIRONMENT, DetserveError, OutputClosed, bounded
from detserve.printable import printable, printable_json, printable_lines


def _quiet(stream: Any) -> None:
    # Nothing more can reach the reader: later writes and the final flush go to /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def stdout_closed() -> NoReturn:
    """The reader of stdout went away (``detserve verify --json | head -c0``): exit 3, saying so
    on stderr. Click and rich would exit 1 here, which reads as a failed verification."""
    _quiet(sys.stdout)
    raise OutputClosed(
        "stdout was closed before the whole result was written",
        hint="the command's outcome was not delivered; read its whole output (or use its exit "
        "code alone, with stdout to /dev/null)",
    )


def stdout_closed_exit() -> NoReturn:
    """:func:`stdout_closed` where no handler reports errors (``--version``): say it, exit 3."""
    _quiet(sys.stdout)
    stderr.print("detserve: error: stdout was closed before the whole result was written")
    sys.exit(EXIT_ENVIRONMENT)


class _Stdout(Console):
    def on_broken_pipe(self) -> None:
        stdout_closed()


class _Stderr(Console):
    def on_broken_pipe(self) -> None:
        _quiet(sys.stderr)
        sys.exit(EXIT_ENVIRONMENT)  # nowhere left to say why


# Markup, emoji codes and highlighting off for every print: what is printed is text, some of it
# received, and a received "[bold]VERIFIED[/]" or ":white_check_mark:" must read as it is.
stdout = _Stdout(soft_wrap=True, highlight=False, markup=False, emoji=False)
stderr = _Stderr(stderr=True, soft_wrap=True, highlight=False, markup=False, emoji=False)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout instead of text.")
]


def emit_json(value: Any) -> None:
    """One JSON object on stdout: canonical JSON, with the characters a terminal would act on
    (DEL, C1, bidi and other format controls, separators) written as ``\\uXXXX`` escapes. A
    parser reads the same value; a document without them is the canonical bytes unchanged."""
    try:
        sys.stdout.write(printable_json(canonical_json(value)) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_closed()


def say(message: str) -> None:
    """A progress or diagnostic line for people, on stderr; it may name a path, so it is bounded
    (and :func:`printable`: one line, controls shown escaped)."""
    stderr.print(bounded(message))


def say_lines(text: str) -> None:
    """A text of several lines on stderr (an error's diagnostics, a traceback): each line
    :func:`printable`, the newlines between them kept."""
    stderr.print(printable_lines(text))


def result(message: str) -> None:
    """A result line, on stdout: :func:`printable` (one line, controls shown escaped)."""
    stdout.print(printable(message))


def _printable_argument(value: object) -> object:
    return printable(value) if isinstance(value, str) else value


class _PrintableRecord(logging.LogRecord):
    """A log record whose message is escaped: each string argument (the values it quotes) one
    :func:`printable` line, the whole :func:`printable_lines` (a library's own message keeps its
    lines)."""

    def getMessage(self) -> str:
        if isinstance(self.args, tuple):
            self.args = tuple(_printable_argument(value) for value in self.args)
        elif isinstance(self.args, dict):
            self.args = {key: _printable_argument(value) for key, value in self.args.items()}
        return printable_lines(super().getMessage())


def _printable_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _PrintableRecord(*args, **kwargs)
    if record.exc_info and not record.exc_text:
        # What a formatter writes for the exception: an exception's text may quote a request.
        # A traceback keeps its lines (a newline in the exception's text among them); each line
        # is escaped.
        record.exc_text = printable_lines(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = printable_lines(record.stack_info)
    return record


def _printable_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    # The warning's text is a value (it may quote one): one line. The source line after it is
    # the warning's location, read from a file: its lines are escaped too.
    shown = _format_warning(printable(str(message)), category, filename, lineno, line)
    return printable_lines(shown.rstrip("\n")) + "\n"


_format_warning = warnings.formatwarning


def escape_library_output() -> None:
    """Make what libraries print escaped too: every log record's message and traceback (uvicorn
    logs an exception from a request's handling, with its text) and every warning. Records are
    made escaped (the record factory), so it holds whatever handlers a library configures later.
    Idempotent."""
    logging.setLogRecordFactory(_printable_record)
    warnings.formatwarning = _printable_warning


def raise_verdict(error: DetserveError | None, *, json_output: bool) -> None:
    """End a command whose report was printed: raise its verdict's error, if any, for ``main`` to
    print. With ``--json`` the report on stdout is the one JSON object (the verdict is in it), so
    only the error's exit code."""
    if error is None:
        return
    if json_output:
        raise typer.Exit(error.exit_code)
    raise error


class ByteProgress:
    """A thread-safe bytes progress bar (hashing): bytes done, throughput, time left."""

    def __init__(self, progress: Progress, description: str) -> None:
        self._progress = progress
        self._task = progress.add_task(printable(description), total=None)

    def set_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def advance(self, count: int) -> None:
        self._progress.advance(self._task, count)


def byte_columns() -> tuple[ProgressColumn, ...]:
    """The columns of the hashing bar: what, bar, bytes done of total, throughput, time left."""
    return (
        TextColumn("{task.description}", markup=False),
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
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}", markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=True, refresh_per_second=2) as progress:
        task = progress.add_task(printable(description), total=total, rate="")
        yield progress, task


class _ByKind(ProgressColumn):
    """One column that renders bytes for a hashing task and counts for a sampling task."""

    def __init__(self, **by_kind: ProgressColumn) -> None:
        super().__init__()
        self._by_kind = by_kind

    def render(self, task: Task) -> RenderableType:
        column = self._by_kind.get(task.fields.get("kind", ""))
        return column.render(task) if column is not None else Text("")


class SamplingProgress:
    """The snapshot verifications and the samples of one run, in one live display.

    It is a :class:`detserve.api.SamplingObserver`: the API tells it how many samples to expect.
    """

    def __init__(self, progress: Progress, total: int | None = None) -> None:
        self._progress = progress
        self._verify = progress.add_task("verifying snapshot", total=None, kind="bytes")
        self._sample = progress.add_task("sampling", total=total, kind="count", rate="")
        self._started: float | None = None

    def planned(self, n_samples: int) -> None:
        """How many samples the run will take."""
        self._progress.update(self._sample, total=n_samples)

    def verified(self, count: int) -> None:
        """Bytes hashed (thread-safe)."""
        self._progress.advance(self._verify, count)

    def sampled(self, done: int, tokens: int) -> None:
        """Samples done so far, and output tokens so far."""
        now = time.perf_counter()
        if self._started is None:
            self._started = now
        elapsed = now - self._started
        rate = f"{tokens / elapsed:,.0f} tok/s" if elapsed > 0 else ""
        self._progress.update(self._sample, completed=done, rate=rate)


@contextmanager
def sampling_progress(total: int | None = None) -> Iterator[SamplingProgress]:
    # One live display, redrawn twice a second: on a CPU server every cycle the client spends is
    # taken from the model (two displays at 10 Hz cost 2.6 % of a core; this one 0.5 %).
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        _ByKind(bytes=DownloadColumn(binary_units=True), count=MofNCompleteColumn()),
        _ByKind(bytes=TransferSpeedColumn(), count=TextColumn("{task.fields[rate]}", markup=False)),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=True, refresh_per_second=2) as progress:
        yield SamplingProgress(progress, total)
