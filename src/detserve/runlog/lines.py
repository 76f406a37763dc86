"""One line of the run-log family: its canonical bytes, the check that a line is exactly them,
and the one bounded reader of line files (run logs and transcript segments alike).

A line is RFC 8785 (JCS, :func:`~detserve.canonical.canonical_json`) of one record plus
``"\\n"``. :class:`LineParser` checks, in order: strict UTF-8, JSON, the schema (the records of
:mod:`detserve.runlog.models`), then canonical form (re-serialising the record as JCS gives the
same bytes). Every failure is a :class:`~detserve.errors.RunLogError` naming where.

:class:`LineFile` reads a file of such lines in one pass and bounded memory whatever its length:
a line over :data:`~detserve.runlog.models.MAX_LINE_BYTES` is refused without being read into
memory, a last line without its newline is refused (a file cut mid-line), and the sha256 of
every line handed out is kept, so that the bytes validated are the bytes hashed (evidence is read
once). :class:`LineReader` is what a reader of one record kind
(:class:`~detserve.runlog.reader.RunLogReader`, :class:`~detserve.runlog.transcript.
TranscriptReader`) builds on: the file opened on entry, the header line checked, closed on exit.

Invariant of the fast path: a sample line is first compared with pydantic's own serialisation of
its record, respelled into ECMAScript's number format (:func:`_fast_sample_line`), and a
transcript's exchange line with pydantic's serialisation as it is (an exchange holds no float:
:func:`_fast_line`); wherever the two differ, ``rfc8785`` itself decides, so the fast path can
only accept a line ``rfc8785`` writes. ``tests/unit/test_runlog_fuzz.py`` checks the respelled
line is ``rfc8785``'s, ``tests/unit/test_transcript.py`` the exchange's. Why there is a fast path
at all, and what it costs: docs/performance.md, "Reading run logs" and "The gateway's own
time".
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from pydantic import BaseModel, ValidationError

from detserve.canonical import canonical_bytes
from detserve.errors import CanonicalJSONError, RunLogError
from detserve.fileio import MAX_RUN_LOG_BYTES, open_input
from detserve.runlog.models import (
    FORMAT_VERSION,
    MAX_LINE_BYTES,
    RECORD_ADAPTER,
    AnyRecord,
    RunLogSample,
    TranscriptExchange,
)


def record_line(record: BaseModel) -> bytes:
    """The canonical (JCS) line of ``record``: what a writer writes and a reader requires.

    Raises :class:`~detserve.errors.CanonicalJSONError` for a value JCS cannot write, which a
    validated record never holds.
    """
    # A sample's fields are all plain values, so its __dict__ is its model_dump() without the
    # copy; the header nests models and needs the dump.
    data = record.__dict__ if type(record) is RunLogSample else record.model_dump()
    return canonical_bytes(data)


def _brief(value: object) -> str:
    if isinstance(value, str):
        return repr(value[:60]) + ("..." if len(value) > 60 else "")
    if value is None or isinstance(value, bool | int | float):
        return repr(value)[:60]
    return type(value).__name__


_RECORD_TYPES: Final = ("header", "sample", "footer", "transcript", "exchange", "transcript-end")


def schema_error(where: str, exc: ValidationError) -> RunLogError:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return RunLogError(f"{where}: not valid JSON: {errors[0]['ctx']['error']}")
    for error in errors:
        if (
            error["loc"] in {("header", "format_version"), ("transcript", "format_version")}
            and error["type"] == "literal_error"
        ):
            # Said first and alone: the rest of another version's header is another schema.
            return RunLogError(
                f"{where}: run-log format version {_brief(error['input'])}; this detserve reads "
                f"version {FORMAT_VERSION} only",
                hint=(
                    f"version {FORMAT_VERSION} lines are RFC 8785 (JCS), the header holds no "
                    "sampling.concurrency (the sidecar has it), samples record their request "
                    "kind and constraint, and a transcript's exchanges record the check of their "
                    "output against their constraint, the constraint field as sent (its JSON "
                    "text) and what the client was sent; re-sample with this detserve, or read "
                    "the log with the detserve that wrote it (version 4: a constraint in "
                    "canonical form, which reordered a schema, and no deliveries; version 3: "
                    "before the constraint check; version 2: before "
                    "certified concurrency and request kinds)"
                ),
            )
    details = []
    for error in errors[:10]:
        loc = error["loc"]
        if loc and loc[0] in _RECORD_TYPES:  # the record type, when the union found it
            loc = loc[1:]
        field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        found = _brief(error["input"])
        details.append(f"{field.lstrip('.') or '(record)'}: {error['msg']} (found {found})")
    if len(errors) > 10:
        details.append(f"... and {len(errors) - 10} more")
    return RunLogError(f"{where}: does not match the run-log schema", details=details)


# rfc8785 is pure Python, and slow (docs/performance.md). pydantic serialises the same record in
# Rust; the two agree on everything but how some floats are spelt. Over the whole double range
# (tests/unit/test_runlog_fuzz.py keeps checking it), pydantic-core writes the same shortest
# digits as ECMAScript and differs only in:
#   whole numbers below 1e16    -3.0, 0.0, -0.0      JCS: -3, 0, 0
#   [1e-6, 1e-5)                1.234e-6, 1e-6       JCS: 0.000001234, 0.000001
#   [1e16, 1e21)                1.5e+16              JCS: 15000000000000000
# Below 1e-6 and from 1e21 both write an exponent (1e-7, 1e+21), the same way. Respelling those
# three turns pydantic's line into rfc8785's; wherever the two lines differ, rfc8785 decides.
_SAMPLE_SERIALIZER: Final = RunLogSample.__pydantic_serializer__
_LOGPROBS_KEY: Final = b'"logprobs":['
_WHOLE: Final = re.compile(rb"([\[,])(-?)([0-9]+)\.0(?=[,\]])")
_SIXTH_DECADE: Final = re.compile(rb"([\[,]-?)([1-9])(?:\.([0-9]+))?e-6(?=[,\]])")
_POSITIONAL_EXPONENT: Final = re.compile(rb"([\[,]-?)([1-9])(?:\.([0-9]+))?e\+(1[6-9]|20)(?=[,\]])")


def _whole(match: re.Match[bytes]) -> bytes:
    digits = match[3]
    return match[1] + (digits if digits == b"0" else match[2] + digits)  # -0.0 is 0


def _sixth_decade(match: re.Match[bytes]) -> bytes:
    return match[1] + b"0.00000" + match[2] + (match[3] or b"")


def _positional(match: re.Match[bytes]) -> bytes:
    # ECMAScript: the digits, then zeros up to the exponent (17 digits at most, so never a point)
    digits = match[2] + (match[3] or b"")
    width = int(match[4]) + 1
    if len(digits) > width:
        return match[1] + digits[:width] + b"." + digits[width:]
    return match[1] + digits + b"0" * (width - len(digits))


def _fast_sample_line(sample: RunLogSample) -> bytes:
    """rfc8785's line for ``sample``, computed by pydantic (the fuzz tests check it is)."""
    line: bytes = _SAMPLE_SERIALIZER.to_json(sample)
    if sample.logprobs:
        start = line.index(_LOGPROBS_KEY) + len(_LOGPROBS_KEY) - 1
        end = line.index(b"]", start) + 1
        floats = line[start:end]
        if b".0," in floats or b".0]" in floats:
            floats = _WHOLE.sub(_whole, floats)
        if b"e-6" in floats:
            floats = _SIXTH_DECADE.sub(_sixth_decade, floats)
        if b"e+" in floats:
            floats = _POSITIONAL_EXPONENT.sub(_positional, floats)
        line = line[:start] + floats + line[end:]
    return line + b"\n"


_EXCHANGE_SERIALIZER: Final = TranscriptExchange.__pydantic_serializer__


def _fast_line(record: AnyRecord) -> bytes | None:
    """rfc8785's line for a sample or an exchange, computed by pydantic; None for the others.
    An exchange's fields (and its request's, and a message's) are declared in canonical order
    and hold strings, integers and nulls, which pydantic-core writes as RFC 8785 does."""
    if type(record) is RunLogSample:
        return _fast_sample_line(record)
    if type(record) is TranscriptExchange:
        line: bytes = _EXCHANGE_SERIALIZER.to_json(record)
        return line + b"\n"
    return None


class LineParser:
    """Checks one line: UTF-8, JSON, schema, canonical form.

    It remembers the last line it accepted, so that two logs read in lock-step with one parser
    validate each line they share once (records are immutable, so sharing them is safe).
    """

    def __init__(self) -> None:
        self._last_line = b""
        self._last_record: AnyRecord | None = None

    def parse(self, line: bytes, where: str) -> AnyRecord:
        if self._last_record is not None and line == self._last_line:
            return self._last_record
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RunLogError(
                f"{where}: invalid UTF-8 at byte {exc.start} of the line ({exc.reason})"
            ) from exc
        try:
            record = RECORD_ADAPTER.validate_json(text)
        except ValidationError as exc:
            raise schema_error(where, exc) from exc
        canonical = _fast_line(record)
        if canonical != line:
            try:
                canonical = record_line(record)  # exact: rfc8785 decides
            except CanonicalJSONError as exc:  # the bounds make it unreachable; fail closed
                raise RunLogError(f"{where}: {exc.message}") from exc
        if canonical != line:
            offset = next(
                (i for i, (a, b) in enumerate(zip(canonical, line, strict=False)) if a != b),
                min(len(canonical), len(line)),
            )
            raise RunLogError(
                f"{where}: not canonical JSON (first difference at byte {offset})",
                hint=(
                    "run-log lines are RFC 8785 (JCS): keys sorted by UTF-16 code units, no "
                    "spaces, UTF-8 (no \\u escapes but for control characters), numbers as "
                    "ECMAScript writes them, one record per line; a line that is not was not "
                    "written by detserve"
                ),
            )
        self._last_line, self._last_record = line, record
        return record


class LineFile:
    """A file of lines read once, in order, one bounded line at a time; numbered and hashed.

    ``what`` names the file in messages ("run log", "transcript"); ``too_long`` is appended to the
    message for a line over the limit, with ``too_long_hint``. Every failure is a
    :class:`~detserve.errors.RunLogError` (a read error's ``__cause__`` is the ``OSError``).
    """

    def __init__(self, path: Path, *, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.too_long = ""
        self.too_long_hint: str | None = None
        #: the number of the last line handed out (0 before the first)
        self.line_no = 0
        #: the bytes of the lines handed out
        self.offset = 0
        self._sha256 = hashlib.sha256()
        self._peeked: bytes | None = None
        self._file: IO[bytes] | None = open_input(
            self.path, what=what, cap=MAX_RUN_LOG_BYTES, error=RunLogError
        )

    @property
    def where(self) -> str:
        """Where the last line handed out is, for messages."""
        return f"{self.path}: line {self.line_no}"

    def sha256(self) -> str:
        """sha256 of the lines handed out so far, in order."""
        return self._sha256.hexdigest()

    def _read(self, line: bool) -> bytes:
        """The next line (at most ``MAX_LINE_BYTES + 1`` bytes), or the next byte."""
        if self._file is None:
            raise RuntimeError(f"{self.what} {self.path} is read after it was closed")
        try:
            return self._file.readline(MAX_LINE_BYTES + 1) if line else self._file.read(1)
        except OSError as exc:
            raise RunLogError(
                f"cannot read {self.what} {self.path}: {exc.strerror or exc}"
            ) from exc

    def peek(self) -> bytes:
        """The next line's raw bytes (at most ``MAX_LINE_BYTES + 1``, unchecked, maybe empty),
        without handing it out: :meth:`next_line` hands out these very bytes, read once."""
        if self._peeked is None:
            self._peeked = self._read(line=True)
        return self._peeked

    def next_line(self) -> bytes | None:
        """The next line, newline included, or None at the end of the file.

        Raises :class:`~detserve.errors.RunLogError` for a read error, a line over the limit and
        a last line without its newline; a line refused is not counted, nor hashed.
        """
        line = self.peek()
        self._peeked = None
        if not line:
            return None
        where = f"{self.path}: line {self.line_no + 1}"
        if len(line) > MAX_LINE_BYTES:
            raise RunLogError(
                f"{where}: longer than {MAX_LINE_BYTES} bytes{self.too_long}",
                hint=self.too_long_hint,
            )
        if not line.endswith(b"\n"):
            raise RunLogError(f"{where}: truncated: the last line has no newline")
        self.line_no += 1
        self.offset += len(line)
        self._sha256.update(line)
        return line

    def at_end(self) -> bool:
        """Whether nothing follows the lines handed out."""
        return not (self._peeked if self._peeked is not None else self._read(line=False))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LineReader:
    """A reader of one kind of line file; use it as a context manager.

    On entry the file is opened (or the :class:`LineFile` given is taken over: :func:`~detserve.
    runlog.kinds.open_log` read its first line to tell which kind it is) and :meth:`_begin`
    checks the header line; on exit, or when entry fails, the file is closed.
    """

    #: names the file in messages
    what: str = "line file"
    #: appended to the message for a line over the limit, with its hint
    too_long: str = ""
    too_long_hint: str | None = None

    def __init__(
        self, path: Path, *, parser: LineParser | None = None, lines: LineFile | None = None
    ) -> None:
        self.path = Path(path)
        self._parser = parser or LineParser()
        self._lines = lines

    def _begin(self, first: bytes | None) -> None:
        """Check the header line (None: the file is empty)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        lines = self._lines
        if lines is None:
            lines = self._lines = LineFile(self.path, what=self.what)
        lines.what, lines.too_long, lines.too_long_hint = (
            self.what,
            self.too_long,
            self.too_long_hint,
        )
        try:
            self._begin(lines.next_line())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._lines is not None:
            self._lines.close()

    @property
    def _file(self) -> LineFile:
        if self._lines is None:
            raise RuntimeError(f"{type(self).__name__} is used outside its `with` block")
        return self._lines

    def _where(self) -> str:
        return self._file.where

    def _check_end(self) -> None:
        """Refuse anything after the footer."""
        lines = self._file
        if not lines.at_end():
            raise RunLogError(f"{self.path}: data after the footer (line {lines.line_no})")
