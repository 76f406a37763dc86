"""Writing a run log: atomically, and never a line the reader would refuse.

Every line written is first put through the reader's own checks (the line, then the rules
across lines); a failure, an exception or fewer samples than the header announces leave nothing
at the destination.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, TypeVar

from pydantic import BaseModel, ValidationError

from detserve.errors import CanonicalJSONError, RunLogError
from detserve.fileio import atomic_writer, check_outputs
from detserve.runlog.lines import LineParser, record_line, schema_error
from detserve.runlog.models import MAX_LINE_BYTES, RunLogHeader, RunLogSample
from detserve.runlog.sequence import LineSequence


class _Aborted(Exception):
    """Passed to the atomic writer to make it discard the partial file."""


# json.dumps builds a new encoder on every call (about 10 µs a line); this one is built once.
_TRANSPORT_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
_WrittenRecord = TypeVar("_WrittenRecord", RunLogHeader, RunLogSample)


def _coerce(
    kind: type[_WrittenRecord], value: BaseModel | Mapping[str, Any], what: str
) -> _WrittenRecord:
    if isinstance(value, kind):
        return value
    if isinstance(value, BaseModel):
        raise RunLogError(f"{what}: expected a {kind.__name__}, got a {type(value).__name__}")
    try:
        # Through JSON, where arrays become the records' tuples under strict validation. Any
        # JSON does: the line written is record_line's, and an integer JCS cannot hold reaches
        # validation, which names its field.
        document = _TRANSPORT_ENCODER.encode(dict(value)).encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (a lone surrogate) included
        raise RunLogError(f"{what}: not JSON: {exc}") from exc
    try:
        return kind.model_validate_json(document)
    except ValidationError as exc:
        raise schema_error(what, exc) from exc


class RunLogWriter:
    """Write a run log atomically, checking every line with the reader's own checks.

    Use it as a context manager: the header is written on entry, :meth:`write` adds samples in
    order, and a clean exit writes the footer and renames the file into place. An exception, or
    fewer samples than the header announces, leaves nothing at ``path``::

        with RunLogWriter(path, header) as log:
            for sample in samples:
                log.write(sample)
        log.sha256  # the run log's hash
    """

    def __init__(
        self,
        path: Path,
        header: RunLogHeader | Mapping[str, Any],
        *,
        force: bool = False,
    ) -> None:
        self.path = Path(path)
        check_outputs([self.path], force=force)
        self._force = force
        self._header = _coerce(RunLogHeader, header, f"{self.path}: header")
        self._parser = LineParser()
        self._file_sha256 = hashlib.sha256()
        self._target: Any = None
        self._handle: IO[bytes] | None = None
        self._sequence: LineSequence | None = None
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        """sha256 of the committed run log."""
        if self._sha256 is None:
            raise RuntimeError("the run log is not committed yet")
        return self._sha256

    def __enter__(self) -> RunLogWriter:
        self._target = atomic_writer(self.path, force=self._force)
        self._handle = self._target.__enter__()
        try:
            self._sequence = LineSequence(self._header)
            self._emit(self._checked_line(self._header, f"{self.path}: header"))
        except BaseException:
            self.abort()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.abort(exc_type, exc, tb)
        elif self._handle is not None:
            self.close()

    def _checked_line(self, record: BaseModel, what: str) -> bytes:
        try:
            line = record_line(record)
        except CanonicalJSONError as exc:  # a record built with model_construct
            raise RunLogError(f"{what}: not JSON: {exc.message}") from exc
        if len(line) > MAX_LINE_BYTES:
            raise RunLogError(f"{what}: the line would be longer than {MAX_LINE_BYTES} bytes")
        # The reader's own checks, so that a writer never writes what a reader refuses.
        self._parser.parse(line, what)
        return line

    def _emit(self, line: bytes) -> None:
        assert self._handle is not None
        self._handle.write(line)
        self._file_sha256.update(line)

    def write(self, sample: RunLogSample | Mapping[str, Any]) -> None:
        """Append the next sample; raise :class:`RunLogError` if it is invalid or out of order."""
        if self._handle is None or self._sequence is None:
            raise RuntimeError("RunLogWriter.write outside its `with` block")
        what = f"{self.path}: sample {self._sequence.next_index}"
        record = _coerce(RunLogSample, sample, what)
        line = self._checked_line(record, what)
        self._sequence.sample(record, line, what)
        self._emit(line)

    def close(self) -> str:
        """Write the footer and commit the file; return its sha256."""
        if self._handle is None or self._sequence is None:
            raise RuntimeError("RunLogWriter.close outside its `with` block")
        sequence = self._sequence
        if sequence.next_index != sequence.header.n_samples:
            error = RunLogError(
                f"{self.path}: {sequence.next_index} samples written; the header announces "
                f"{sequence.header.n_samples}; nothing was written"
            )
            self.abort(type(error), error, None)
            raise error
        try:
            self._emit(self._checked_line(sequence.expected_footer(), f"{self.path}: footer"))
        except BaseException as exc:
            self.abort(type(exc), exc, exc.__traceback__)
            raise
        self._handle = None
        self._target.__exit__(None, None, None)
        self._sha256 = self._file_sha256.hexdigest()
        return self._sha256

    def abort(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        """Discard the partial file; nothing is left at ``path``."""
        if self._handle is None:
            return
        self._handle = None
        if exc is None:
            exc_type, exc = _Aborted, _Aborted()
        self._target.__exit__(exc_type, exc, tb)


def write_run_log(
    path: Path,
    header: RunLogHeader | Mapping[str, Any],
    samples: Iterable[RunLogSample | Mapping[str, Any]],
    *,
    force: bool = False,
) -> str:
    """Write a whole run log atomically and return its sha256.

    ``header`` and each sample may be records or mappings (``record``, ``format`` and
    ``format_version`` may be left out); samples must be in index order from 0.
    """
    with RunLogWriter(path, header, force=force) as log:
        for sample in samples:
            log.write(sample)
    return log.sha256
