"""Run logs: the operator's claim, "with these pinned inputs, this server generated these tokens".

A run log (``*.runlog.jsonl``) is canonical JSON Lines: every line is RFC 8785 (JCS,
:func:`~detserve.canonical.canonical_json`) of one record plus ``"\\n"``, so two faithful runs are
byte-identical, one sha256 names a run, and a verifier in any language checks a line by
re-canonicalising it with its own JCS library.
Nothing that legitimately varies between runs (times, host, container id) is in it; that goes to
the sampler's sidecar.

* line 1, the header: the pins (model, revision, manifest, image, prompt bundle, vLLM version,
  engine arguments, served name), the sampling parameters and ``n_samples``;
* lines 2 .. n_samples + 1, one sample each, indices 0 .. n_samples - 1 in order;
* the last line, the footer: ``n_samples`` again and the sha256 of the exact bytes of the header
  line and of all sample lines, so that truncation and tampering are detected.

One reader and one writer for the format, one module a concept:

* :mod:`~detserve.runlog.models`: the records, their bounds and the generated JSON Schema
  (``python -m detserve.runlog`` prints it);
* :mod:`~detserve.runlog.lines`: one line, its canonical bytes and the check that it is exactly
  them (:class:`LineParser`), and the one bounded reader of line files (:class:`LineFile`), which
  run logs and gateway transcripts share;
* :mod:`~detserve.runlog.sequence`: the rules across lines (order, counts, the footer's hashes);
* :mod:`~detserve.runlog.reader`: :class:`RunLogReader`, :func:`read_run_log`,
  :func:`validate_run_log`;
* :mod:`~detserve.runlog.writer`: :class:`RunLogWriter`, :func:`write_run_log`;
* :mod:`~detserve.runlog.kinds`: :func:`open_log`, the one place that tells a run log from a
  gateway transcript (:mod:`~detserve.runlog.transcript`), by its first line, read once.

Invariants: the writer writes only what the reader accepts; the reader accepts exactly the lines
``jsonschema`` accepts with the committed schema, canonical form and the rules across lines
aside, and but for one documented respect in which Python's ``re`` departs from ECMA-262 (which
JSON Schema specifies): ``$`` matches only at the end of the string
(``tests/unit/test_runlog_fuzz.py`` checks both). A log of another ``format_version`` is refused
by name (version 1 was Python's ``json.dumps`` form, before JCS). Every failure is a
:class:`~detserve.errors.RunLogError` naming the file and the line.

Why the records are validated by pydantic rather than ``jsonschema``, and what reading costs:
docs/performance.md, "Reading run logs".
"""

from detserve.runlog.kinds import LogReader, is_transcript, open_log
from detserve.runlog.lines import LineFile, LineParser, LineReader, _fast_sample_line, record_line
from detserve.runlog.models import (
    FORMAT,
    FORMAT_VERSION,
    MAX_LINE_BYTES,
    MAX_SAMPLES,
    MAX_TEXT_CHARS,
    MAX_TOKENS,
    DevicePins,
    RunLogFooter,
    RunLogHeader,
    RunLogRecord,
    RunLogSample,
    RunPins,
    SamplingParams,
)
from detserve.runlog.reader import (
    RunLogReader,
    RunLogSummary,
    read_run_log,
    require_same_bytes,
    run_log_sha256,
    validate_run_log,
)
from detserve.runlog.schema import SCHEMA_ID, run_log_json_schema
from detserve.runlog.writer import RunLogWriter, write_run_log

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_LINE_BYTES",
    "MAX_SAMPLES",
    "MAX_TEXT_CHARS",
    "MAX_TOKENS",
    "SCHEMA_ID",
    "DevicePins",
    "LineFile",
    "LineParser",
    "LineReader",
    "LogReader",
    "RunLogFooter",
    "RunLogHeader",
    "RunLogReader",
    "RunLogRecord",
    "RunLogSample",
    "RunLogSummary",
    "RunLogWriter",
    "RunPins",
    "SamplingParams",
    "_fast_sample_line",
    "is_transcript",
    "open_log",
    "read_run_log",
    "record_line",
    "require_same_bytes",
    "run_log_json_schema",
    "run_log_sha256",
    "validate_run_log",
    "write_run_log",
]
