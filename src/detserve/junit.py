"""A command's outcome as a JUnit XML report, the file CI systems display as test results.

The dialect is the common one of Ant and Maven Surefire, which GitHub's JUnit publishers and
GitLab's ``artifacts:reports:junit`` read: ``<testsuites>`` holding one ``<testsuite>`` (the
command) holding ``<testcase>`` elements (what the command checked), each passed, or holding one
``<failure>`` (a verification failed: exit 1) or one ``<error>`` (bad input, exit 2; the
environment, exit 3; or a bug).

Invariants:

* Fail closed: a case is a pass only when the command finished and its outcome holds no error
  (:meth:`JunitCase.of`); the suite's counts are computed from its cases, never given. An
  outcome the command never recorded is an error case, not a pass.
* The document is built by :mod:`xml.etree.ElementTree`, which escapes ``&``, ``<``, ``>`` and
  quotes; no XML is written by hand. Every text and attribute value may hold text from outside
  (a path, a run log's field, a server's message), so each passes through
  :func:`~detserve.printable.printable` first: control characters (which XML 1.0 forbids, or a
  browser would act on), bidi and other format characters, surrogates and noncharacters are
  written as their visible escapes (``\\x1b``). An attribute is one line; a text keeps its lines.
* The report is written with :func:`~detserve.fileio.atomic_write_bytes`: all of it or nothing.
  Its path is checked by the caller (:func:`~detserve.fileio.check_outputs`) before any work.
"""

from __future__ import annotations

import datetime as dt
import io
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from detserve._version import __version__
from detserve.errors import EXIT_OK, EXIT_VERIFICATION, DetserveError
from detserve.fileio import atomic_write_bytes
from detserve.printable import printable, printable_lines

#: the exit code and kind a report gives an exception that is not a :class:`DetserveError` (a
#: bug): the CLI exits 3 for it, and it must never read as a verification verdict
INTERNAL_ERROR_KIND: Final = "internal-error"
INTERNAL_ERROR_EXIT: Final = 3


class Outcome(StrEnum):
    PASSED = "passed"
    FAILURE = "failure"
    """A verification failed (exit 1)."""
    ERROR = "error"
    """The command could not decide (exit 2 or 3, or a bug)."""


@dataclass(frozen=True)
class JunitCase:
    """One thing a command checked, and how it ended."""

    classname: str
    """The command, dotted: ``detserve.eval-determinism``."""
    name: str
    """What was checked: the command and its subject."""
    seconds: float
    outcome: Outcome
    exit_code: int
    """What the command exits with for this outcome."""
    kind: str | None = None
    """The error's kind (``divergence``, ``invalid-run-log``), for a failure or an error."""
    message: str | None = None
    """The error's one-line message, for a failure or an error."""
    details: str = ""
    """The error's whole diagnostics, for a failure or an error."""
    output: str = ""
    """What the command printed as its result (its report's lines)."""

    @classmethod
    def of(
        cls,
        classname: str,
        name: str,
        seconds: float,
        *,
        lines: Sequence[str] = (),
        error: BaseException | None = None,
    ) -> JunitCase:
        """The case of a command that finished with ``lines`` as its result and ``error`` as
        its verdict (``None``: it passed). A :class:`~detserve.errors.VerificationError` is a
        failure; any other :class:`DetserveError` an error with its exit code; anything else
        an internal error (exit 3)."""
        output = "\n".join(lines)
        if error is None:
            return cls(classname, name, seconds, Outcome.PASSED, EXIT_OK, output=output)
        if isinstance(error, DetserveError):
            outcome = Outcome.FAILURE if error.exit_code == EXIT_VERIFICATION else Outcome.ERROR
            return cls(
                classname,
                name,
                seconds,
                outcome,
                error.exit_code,
                kind=error.kind,
                message=error.message,
                details=error.diagnostics(),
                output=output,
            )
        return cls(
            classname,
            name,
            seconds,
            Outcome.ERROR,
            INTERNAL_ERROR_EXIT,
            kind=INTERNAL_ERROR_KIND,
            message=f"{type(error).__name__}: {error}",
            details="this is a bug in detserve; re-run with --verbose and report the traceback",
            output=output,
        )

    @classmethod
    def unrecorded(cls, classname: str, name: str, seconds: float, exit_code: int) -> JunitCase:
        """The case of a command that ended without recording an outcome: never a pass."""
        return cls(
            classname,
            name,
            seconds,
            Outcome.ERROR,
            exit_code or INTERNAL_ERROR_EXIT,
            kind=INTERNAL_ERROR_KIND,
            message=f"the command ended with exit {exit_code} and no verdict recorded",
            details="a report is a pass only for a recorded outcome that holds no error",
        )


def _text(value: str) -> str:
    return printable_lines(value)


def _attribute(value: str) -> str:
    return printable(value)


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}"


def _case_element(parent: ET.Element, case: JunitCase) -> None:
    element = ET.SubElement(
        parent,
        "testcase",
        {
            "classname": _attribute(case.classname),
            "name": _attribute(case.name),
            "time": _seconds(case.seconds),
        },
    )
    if case.outcome is not Outcome.PASSED:
        verdict = ET.SubElement(
            element,
            case.outcome.value,
            {"message": _attribute(case.message or ""), "type": _attribute(case.kind or "")},
        )
        verdict.text = _text(case.details)
    if case.output:
        ET.SubElement(element, "system-out").text = _text(case.output)


def junit_document(
    suite: str,
    cases: Sequence[JunitCase],
    *,
    timestamp: dt.datetime | None = None,
    hostname: str | None = None,
) -> bytes:
    """The UTF-8 bytes of a JUnit XML report: one suite named ``suite`` holding ``cases``."""
    when = (timestamp or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(tzinfo=None)
    failures = sum(case.outcome is Outcome.FAILURE for case in cases)
    errors = sum(case.outcome is Outcome.ERROR for case in cases)
    counts = {
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": str(errors),
        "skipped": "0",
        "time": _seconds(sum(case.seconds for case in cases)),
    }
    root = ET.Element("testsuites", {"name": "detserve", **counts})
    element = ET.SubElement(
        root,
        "testsuite",
        {
            "name": _attribute(suite),
            **counts,
            "timestamp": when.isoformat(timespec="seconds"),
            "hostname": _attribute(hostname if hostname is not None else socket.gethostname()),
        },
    )
    properties = ET.SubElement(element, "properties")
    exit_code = max((case.exit_code for case in cases), default=EXIT_OK)
    for name, value in (("detserve.version", __version__), ("detserve.exit_code", str(exit_code))):
        ET.SubElement(properties, "property", {"name": name, "value": value})
    for case in cases:
        _case_element(element, case)
    ET.indent(root)
    buffer = io.BytesIO()
    ET.ElementTree(root).write(buffer, encoding="utf-8", xml_declaration=True)
    return buffer.getvalue() + b"\n"


def write_junit(
    path: Path,
    suite: str,
    cases: Sequence[JunitCase],
    *,
    force: bool,
) -> None:
    """Write the report of ``cases`` to ``path``, atomically (checked before by the caller)."""
    atomic_write_bytes(path, junit_document(suite, cases), force=force)
