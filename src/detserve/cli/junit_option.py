"""``--junit-xml PATH``: a verifying command's outcome also written as a JUnit XML report.

A command takes the option (:data:`JunitXmlOption`), is decorated with :func:`junit_xml_report`
and, before it ends, records its result lines and its verdict with :func:`record_outcome`. The
report is written when the command ends, whichever way:

* a recorded verdict that holds no error, and the command returned: a passed case;
* a recorded verdict that is not a pass, or a :class:`~detserve.errors.DetserveError` raised
  anywhere in the command: a failure (exit 1) or an error (exit 2, 3), with its diagnostics;
* any other exception (a bug), or a command that ended without recording: an error case.

The exit code is the command's, unchanged, and the report never passes where the exit code does
not. The path is checked before any work as every output is (:func:`~detserve.fileio.
check_outputs`: never an input nor inside one, never a link, a FIFO or a directory, never
another output, an existing file only with ``--force``), then against the profile's snapshot
store and manifest once the profile is read; a refused path gets no report. When writing the
report fails, a command that passed fails with that error; a command that failed keeps its own
error and exit code, and the lost report is said on stderr. Ctrl-C writes nothing, as
everywhere. An error in the command line itself (an unknown option) is the parser's, before the
command runs: no report then.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec

import typer

from detserve.cli.output import say
from detserve.errors import EXIT_OK, DetserveError, UnpinnedError, UnsafeOutputError, bounded
from detserve.fileio import check_outputs

if TYPE_CHECKING:
    from detserve.junit import JunitCase

JunitXmlOption = Annotated[
    Path | None,
    typer.Option(
        "--junit-xml",
        dir_okay=False,
        metavar="PATH",
        help=(
            "Also write the outcome as a JUnit XML report here, pass or fail (for CI: GitHub's "
            "JUnit publishers, GitLab's artifacts:reports:junit). The exit code is unchanged."
        ),
    ),
]

P = ParamSpec("P")


class _Recorder:
    """The report of one command run: where it goes, what it may not be, and the outcome."""

    def __init__(self, path: Path, *, force: bool) -> None:
        self.path: Path | None = path
        self.force = force
        self.outputs: list[Path] = []
        self.inputs: list[Path] = []
        self.output_dirs: list[Path] = []
        self.lines: tuple[str, ...] = ()
        self.error: DetserveError | None = None
        self.recorded = False

    def check(self) -> None:
        """Refuse the path (and never write it) as every output is refused."""
        if self.path is None:
            return
        try:
            check_outputs([self.path, *self.outputs], force=self.force, inputs=self.inputs)
            target = self.path.resolve()
            for directory in self.output_dirs:
                if target.is_relative_to(directory.resolve()):
                    raise UnsafeOutputError(
                        f"refusing to write {bounded(str(self.path))}: it is inside the output "
                        f"directory {bounded(str(directory))}",
                        hint="a stray file would be pinned with that output; write the JUnit "
                        "report elsewhere",
                    )
        except DetserveError:
            self.path = None
            raise


_current: ContextVar[_Recorder | None] = ContextVar("detserve_junit", default=None)


def record_outcome(lines: Sequence[str], error: DetserveError | None) -> None:
    """The running command's result lines and its verdict's error (``None``: it passed), for its
    JUnit report; nothing when no report was asked for."""
    recorder = _current.get()
    if recorder is not None:
        recorder.lines = tuple(lines)
        recorder.error = error
        recorder.recorded = True


def _paths(value: object) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, str | Path):
        return [Path(value)]
    if isinstance(value, Iterable):
        return [Path(item) for item in value if item is not None]
    return []


def _profile_stores(config: object) -> list[Path]:
    """The snapshot store and the manifest of the profile at ``config``: the report may be
    inside neither (it would be an extra file of the snapshot, or beside the trust root)."""
    if config is None:
        return []
    from detserve.api import load_profile

    loaded = load_profile(Path(str(config)))
    stores = [loaded.hf_home]
    with contextlib.suppress(UnpinnedError):  # no revision, no manifest (--allow-unpinned)
        stores.append(loaded.manifest_path)
    return stores


def junit_xml_report(
    command: str,
    *,
    subject: Callable[[Mapping[str, Any]], str],
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    output_dirs: Sequence[str] = (),
    profile: str | None = None,
) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Give a command a JUnit report; the names are its parameters: ``inputs`` the files it
    reads, ``outputs`` the files and ``output_dirs`` the directories it writes, ``profile`` its
    profile (whose snapshot store and manifest are inputs too). ``subject`` names what it checks,
    from its arguments. The command's ``force`` parameter, if any, lets the report replace a
    file."""

    def decorate(function: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            path = kwargs.get("junit_xml")
            if path is None:
                function(*args, **kwargs)
                return
            recorder = _Recorder(Path(str(path)), force=bool(kwargs.get("force", False)))
            recorder.inputs = [path for name in inputs for path in _paths(kwargs.get(name))]
            recorder.outputs = [path for name in outputs for path in _paths(kwargs.get(name))]
            recorder.output_dirs = [p for name in output_dirs for p in _paths(kwargs.get(name))]
            recorder.check()
            name = f"{command} {subject(kwargs)}"
            token = _current.set(recorder)
            started = time.monotonic()
            try:
                if profile is not None:
                    recorder.inputs.extend(_profile_stores(kwargs.get(profile)))
                    recorder.check()
                function(*args, **kwargs)
            except typer.Exit as ended:
                # `--json` ends a verdict that is not a pass with its exit code alone
                _write(recorder, command, name, started, recorder.error, ended.exit_code)
                raise
            except Exception as exc:  # reported, then raised again as it was
                _write(recorder, command, name, started, exc, EXIT_OK)
                raise
            finally:
                _current.reset(token)
            # KeyboardInterrupt and SystemExit pass by above: nothing is written, as everywhere
            _write(recorder, command, name, started, recorder.error, EXIT_OK)

        return run

    return decorate


def _case(
    recorder: _Recorder,
    command: str,
    name: str,
    started: float,
    error: BaseException | None,
    code: int,
) -> JunitCase:
    from detserve.junit import JunitCase

    classname = f"detserve.{command.replace(' ', '.')}"
    seconds = time.monotonic() - started
    if error is None and (not recorder.recorded or code != EXIT_OK):
        return JunitCase.unrecorded(classname, name, seconds, code)
    return JunitCase.of(classname, name, seconds, lines=recorder.lines, error=error)


def _write(
    recorder: _Recorder,
    command: str,
    name: str,
    started: float,
    error: BaseException | None,
    code: int,
) -> None:
    from detserve.junit import Outcome, write_junit  # xml.etree: only when a report is asked for

    path = recorder.path
    if path is None:
        return
    case = _case(recorder, command, name, started, error, code)
    try:
        write_junit(path, f"detserve {command}", [case], force=recorder.force)
    except DetserveError as exc:
        if case.outcome is Outcome.PASSED:
            raise  # the command delivered less than was asked: it fails with this error
        say(f"detserve: warning: the JUnit report {bounded(str(path))} was not written: {exc}")
        return
    say(f"JUnit report written to {path} ({case.outcome.value})")
