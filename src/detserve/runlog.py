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
* the last line, the footer: ``n_samples`` again and the sha256 of the exact bytes of all sample
  lines, so that truncation and tampering are detected.

The records are the pydantic models below; the JSON Schema committed at
``src/detserve/schemas/run-log.schema.json`` is generated from them (``python -m
detserve.runlog``), and ``tests/unit/test_runlog.py`` checks that the committed file is the
generated one.

Why pydantic validates the lines, not ``jsonschema``
----------------------------------------------------
Measured on this project's 2-core machine with a typical sample line (32 prompt tokens, 48 output
tokens with logprobs, 1.8 kB): ``jsonschema``'s Draft 2020-12 validator costs about 800 µs a line
(80 s for one 100,000-sample log; every array item is a Python-level validation step), against
10 µs for pydantic-core parsing and validating the same bytes. Reading must stay within 10 s for
two 100,000-sample logs, so every record is validated by the models the committed schema is
generated from, and ``tests/unit/test_runlog_fuzz.py`` proves, on generated records and
mutations of them, that ``jsonschema`` with the committed schema accepts exactly the lines the
reader accepts. JCS, like JSON Schema, has one number type: a float field holding a whole number
is written as an integer (``0``, ``-1``), and pydantic's strict floats accept that. Beyond the
canonical form and the rules across lines, the reader is stricter than a plain JSON Schema
validator in one documented respect that Python's ``re`` gets wrong: ``$`` in a pattern matches
only at the end of the string, as ECMA-262 (which JSON Schema specifies) says; Python's ``re``,
which ``jsonschema`` uses, also matches before a final newline.

Every integer field is bounded within ±(2**53 - 1), what JCS writes exactly
(:data:`~detserve.canonical.MAX_EXACT_INTEGER`). A log of another ``format_version`` is refused
by name (version 1 was Python's ``json.dumps`` form, before JCS).

Checks, in order, for every line: at most :data:`MAX_LINE_BYTES` (a longer line is refused
without reading it into memory), strict UTF-8, JSON, the schema (field types and bounds, which
also bound memory), canonical form (re-serialising the record as JCS gives the same bytes:
sorted keys, no spaces, ECMAScript numbers, no duplicate keys), then the rules across
lines: header first, indices in order, logprobs present exactly when the header asks for them
and one per output token, at most ``max_tokens`` output tokens, the footer's count and hash, and
nothing after the footer. Every failure is a :class:`RunLogError` naming the file and the line.

Cost (best of 5 runs over 2,000 lines like ``benchmarks/bench_eval.py``'s, 1.9 kB, logprobs 40%
within 1e-4 of 0): re-serialising a sample line with ``rfc8785`` (pure Python) costs 100 µs, 10 s
for one 100,000-sample log, beyond what reading two logs within 10 s allows. So a sample line is
compared with pydantic's own serialisation of its record (Rust), after respelling the floats it
writes differently from ECMAScript (see :func:`_fast_sample_line`): 23 µs, and 38 µs a line for
the whole check with pydantic-core's parsing and validation. Any difference sends the line to
``rfc8785`` itself, which decides. ``tests/unit/test_runlog_fuzz.py``
checks that the respelled line is ``rfc8785``'s on generated samples (all of Unicode, floats of
every magnitude, the edge cases) and that every field is declared in canonical order.

Two logs read in lock-step with one :class:`LineParser` validate the lines they share once.
Validating in worker processes was measured and dropped: on this shared 2-core machine two
workers took 2.27 s for 20,000 lines against 2.11 s in one process.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Annotated, Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from detserve.canonical import MAX_EXACT_INTEGER, canonical_bytes
from detserve.errors import CanonicalJSONError, RunLogError
from detserve.fileio import MAX_RUN_LOG_BYTES, atomic_writer, check_outputs, open_input
from detserve.imageref import DIGEST_REF_PATTERN

FORMAT: Final = "detserve-run-log"
#: 2: RFC 8785 (JCS) lines and integers within ±(2**53 - 1); 1 was Python's ``json.dumps`` form.
FORMAT_VERSION: Final = 2

#: The longest line read, newline included; a longer one is refused before it is parsed. Parsing
#: takes up to 40 times a line's size in memory (measured: 335 MB for an 8 MiB line of one-digit
#: token ids), so this is what bounds the reader's memory. A sample of 1M prompt and 1M output
#: tokens with logprobs fits.
MAX_LINE_BYTES: Final = 8 * 1024 * 1024
#: The most token ids (or logprobs) in one field of a sample.
MAX_TOKENS: Final = 1 << 20
#: The longest ``text`` of a sample, in characters.
MAX_TEXT_CHARS: Final = 1 << 22
#: The most samples in one log.
MAX_SAMPLES: Final = 10**9

SCHEMA_ID: Final = "https://detserve.invalid/schemas/run-log.schema.json"

# Patterns are ECMA-262 and Python compatible; each fixed-length one is paired with its length.
_SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
_COMMIT_PATTERN: Final = r"^[0-9a-f]{40}$"
_MODEL_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
_FINISH_REASON_PATTERN: Final = r"^[a-z_]+$"

Sha256Hex = Annotated[str, Field(min_length=64, max_length=64, pattern=_SHA256_PATTERN)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
TokenIds = Annotated[tuple[TokenId, ...], Field(max_length=MAX_TOKENS)]
Logprob = Annotated[float, Field(allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=256)]


class _Record(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        use_attribute_docstrings=True,
        # The schema describes lines as written, where `record` and `format` are always present.
        json_schema_serialization_defaults_required=True,
    )


_ENV_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
EnvName = Annotated[str, Field(min_length=1, max_length=128, pattern=_ENV_NAME_PATTERN)]


class DevicePins(_Record):
    """What the server ran on, as far as it is the same on every host that replays it."""

    gpus: Annotated[int, Field(ge=0, le=1024)]
    """The number of GPUs requested (0 on a CPU). Which GPUs, by id, is the host's business."""

    kind: Literal["cpu", "nvidia"]
    """The device the engine ran on."""


class RunPins(_Record):
    """Everything a replay must hold fixed to be a replay, and nothing else.

    Only what decides the tokens: a profile's file name or directory, the host and the container's
    id are not pins (they go to the sidecar), so a verifier who names things differently still
    replays the claim.
    """

    device: DevicePins
    """The device request: CPU, or how many GPUs."""

    engine_args: Annotated[
        tuple[Annotated[str, Field(max_length=4096)], ...], Field(max_length=1024)
    ]
    """The engine arguments the container runs, in order."""

    entrypoint: (
        Annotated[tuple[Annotated[str, Field(max_length=4096)], ...], Field(max_length=16)] | None
    )
    """The container's entrypoint when the profile sets one; null for the image's own."""

    environment: Annotated[
        dict[EnvName, Annotated[str, Field(max_length=4096)]],
        Field(max_length=256, json_schema_extra={"additionalProperties": False}),
    ]
    """The container's environment as detserve sets it (secrets excluded), by name."""

    image: Annotated[str, Field(max_length=512, pattern=DIGEST_REF_PATTERN)]
    """The runtime image, ``REPO@sha256:<64 hex>``."""

    manifest_sha256: Sha256Hex
    """sha256 of the snapshot manifest the snapshot verified against, before and after sampling."""

    model_id: Annotated[str, Field(min_length=3, max_length=256, pattern=_MODEL_ID_PATTERN)]
    """Hugging Face model id, ``ORG/NAME``."""

    model_revision: Annotated[str, Field(min_length=40, max_length=40, pattern=_COMMIT_PATTERN)]
    """The model repository commit, 40 hex digits."""

    prompt_bundle_sha256: Sha256Hex
    """sha256 of the prompt bundle."""

    served_model_name: Name
    """The model name the server serves and requests name."""

    vllm_version: Annotated[str, Field(min_length=1, max_length=128)]
    """The version the server reported."""


class SamplingParams(_Record):
    """How every prompt was sampled."""

    temperature: Annotated[float, Field(ge=0, le=0)]
    """Always 0: greedy decoding."""

    seed: Annotated[int, Field(ge=0, le=MAX_EXACT_INTEGER)]
    """The seed of the engine and of every request; at most 2**53 - 1, what JCS writes exactly."""

    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)]
    """Maximum output tokens per prompt."""

    concurrency: Literal[1]
    """Always 1: one request in flight."""

    logprobs: Annotated[int, Field(ge=0, le=1024)] | None
    """The ``logprobs`` request parameter, or null when logprobs were not requested."""


class RunLogHeader(_Record):
    """Line 1 of a run log."""

    record: Literal["header"] = "header"
    """Record type."""

    format: Literal["detserve-run-log"] = FORMAT
    """File format name."""

    format_version: Literal[2] = FORMAT_VERSION
    """File format version."""

    pins: RunPins
    """The pinned inputs."""

    sampling: SamplingParams
    """The sampling parameters."""

    n_samples: Annotated[int, Field(ge=1, le=MAX_SAMPLES)]
    """The number of sample lines that follow."""


class RunLogSample(_Record):
    """One prompt and what the server generated for it.

    The fields are declared in sorted order, the order canonical JSON writes them in, so that
    pydantic's own serialiser can stand in for it (see :func:`_fast_sample_line`).
    """

    finish_reason: Annotated[
        str, Field(min_length=1, max_length=32, pattern=_FINISH_REASON_PATTERN)
    ]
    """Why generation stopped: ``length``, ``stop``, ..."""

    index: Annotated[int, Field(ge=0, lt=MAX_SAMPLES)]
    """Position in the log, from 0."""

    logprobs: Annotated[tuple[Logprob, ...], Field(max_length=MAX_TOKENS)] | None
    """The logprob of each generated token, or null when the header's ``logprobs`` is null."""

    output_token_ids: TokenIds
    """The generated tokens."""

    prompt_id: Name
    """The prompt's id in the prompt bundle."""

    prompt_sha256: Sha256Hex
    """sha256 of the prompt, as in the prompt bundle."""

    prompt_token_ids: Annotated[tuple[TokenId, ...], Field(min_length=1, max_length=MAX_TOKENS)]
    """The prompt as the server tokenized it."""

    record: Literal["sample"] = "sample"
    """Record type."""

    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    """The generated text, as the server decoded it."""


class RunLogFooter(_Record):
    """The last line of a run log."""

    record: Literal["footer"] = "footer"
    """Record type."""

    n_samples: Annotated[int, Field(ge=1, le=MAX_SAMPLES)]
    """The number of sample lines, as in the header."""

    header_sha256: Sha256Hex
    """sha256 of the exact bytes of the header line, newline included."""

    samples_sha256: Sha256Hex
    """sha256 of the exact bytes of all sample lines, newlines included."""


RunLogRecord = Annotated[RunLogHeader | RunLogSample | RunLogFooter, Field(discriminator="record")]
_RECORD_ADAPTER: TypeAdapter[RunLogHeader | RunLogSample | RunLogFooter] = TypeAdapter(RunLogRecord)


def run_log_json_schema() -> dict[str, Any]:
    """The JSON Schema of one run-log line (committed as ``schemas/run-log.schema.json``)."""
    schema = _RECORD_ADAPTER.json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "detserve run-log line",
        "description": (
            "One line of a detserve run log (canonical JSON Lines): a header, then one sample "
            "per prompt in index order, then a footer. Beyond this schema, readers require "
            "RFC 8785 canonical JSON (JCS) and the rules across lines (order, counts, the "
            "footer's hash)."
        ),
        **schema,
    }


# --- one line -----------------------------------------------------------------------------------


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


_RECORD_TYPES: Final = ("header", "sample", "footer")


def _schema_error(where: str, exc: ValidationError) -> RunLogError:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return RunLogError(f"{where}: not valid JSON: {errors[0]['ctx']['error']}")
    for error in errors:
        if error["loc"] == ("header", "format_version") and error["type"] == "literal_error":
            # Said first and alone: the rest of another version's header is another schema.
            return RunLogError(
                f"{where}: run-log format version {_brief(error['input'])}; this detserve reads "
                f"version {FORMAT_VERSION} only",
                hint=(
                    f"version {FORMAT_VERSION} lines are RFC 8785 (JCS); re-sample with this "
                    "detserve, or read the log with the detserve that wrote it"
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


# rfc8785 is pure Python (100 µs a sample line). pydantic serialises the same record in Rust; the
# two agree on everything but how some floats are spelt. Measured over the whole double range
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


class LineParser:
    """Checks one line: UTF-8, JSON, schema, canonical form.

    It remembers the last line it accepted, so that two logs read in lock-step with one parser
    validate each line they share once (records are immutable, so sharing them is safe).
    """

    def __init__(self) -> None:
        self._last_line = b""
        self._last_record: RunLogHeader | RunLogSample | RunLogFooter | None = None

    def parse(self, line: bytes, where: str) -> RunLogHeader | RunLogSample | RunLogFooter:
        if self._last_record is not None and line == self._last_line:
            return self._last_record
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RunLogError(
                f"{where}: invalid UTF-8 at byte {exc.start} of the line ({exc.reason})"
            ) from exc
        try:
            record = _RECORD_ADAPTER.validate_json(text)
        except ValidationError as exc:
            raise _schema_error(where, exc) from exc
        canonical = _fast_sample_line(record) if type(record) is RunLogSample else None
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


# --- rules across lines -------------------------------------------------------------------------


class _Sequence:
    """The rules that span lines: order, counts, logprobs, and the footer's hash."""

    def __init__(self, header: RunLogHeader) -> None:
        self.header = header
        self.next_index = 0
        # The reader has checked the header line is canonical, so these are its exact bytes.
        self.header_sha256 = hashlib.sha256(record_line(header)).hexdigest()
        self._samples_sha256 = hashlib.sha256()

    def sample(self, sample: RunLogSample, line: bytes, where: str) -> None:
        header = self.header
        if sample.index != self.next_index:
            raise RunLogError(
                f"{where}: sample index {sample.index} out of order: expected {self.next_index}"
            )
        if self.next_index >= header.n_samples:
            raise RunLogError(
                f"{where}: more samples than the header's n_samples ({header.n_samples})"
            )
        n_output = len(sample.output_token_ids)
        if n_output > header.sampling.max_tokens:
            raise RunLogError(
                f"{where}: {n_output} output tokens exceed the header's max_tokens "
                f"({header.sampling.max_tokens})"
            )
        if sample.logprobs is None:
            if header.sampling.logprobs is not None:
                raise RunLogError(f"{where}: no logprobs, but the header requested them")
        elif header.sampling.logprobs is None:
            raise RunLogError(f"{where}: logprobs present, but the header did not request them")
        elif len(sample.logprobs) != n_output:
            raise RunLogError(
                f"{where}: {len(sample.logprobs)} logprobs for {n_output} output tokens"
            )
        self._samples_sha256.update(line)
        self.next_index += 1

    def expected_footer(self) -> RunLogFooter:
        return RunLogFooter(
            n_samples=self.header.n_samples,
            header_sha256=self.header_sha256,
            samples_sha256=self._samples_sha256.hexdigest(),
        )

    def footer(self, footer: RunLogFooter, where: str) -> None:
        if self.next_index != self.header.n_samples:
            raise RunLogError(
                f"{where}: footer after {self.next_index} samples; the header announces "
                f"{self.header.n_samples}"
            )
        if footer.n_samples != self.header.n_samples:
            raise RunLogError(
                f"{where}: the footer's n_samples ({footer.n_samples}) is not the header's "
                f"({self.header.n_samples})"
            )
        if footer.header_sha256 != self.header_sha256:
            raise RunLogError(
                f"{where}: the header line does not match the footer's hash",
                details=[f"footer: {footer.header_sha256}", f"header: {self.header_sha256}"],
                hint="the log was changed after it was written",
            )
        expected = self._samples_sha256.hexdigest()
        if footer.samples_sha256 != expected:
            raise RunLogError(
                f"{where}: the sample lines do not match the footer's hash",
                details=[f"footer: {footer.samples_sha256}", f"lines:  {expected}"],
                hint="the log was changed after it was written",
            )


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLogSummary:
    """A run log that was read to its end and found valid."""

    path: Path
    sha256: str
    header: RunLogHeader
    footer: RunLogFooter

    @property
    def n_samples(self) -> int:
        return self.header.n_samples


class RunLogReader:
    """One run log, read and checked one line at a time; use it as a context manager.

    The header is read on entry. :meth:`lines` (or :meth:`samples`) yields the samples and,
    once it is exhausted, has checked the footer and the end of the file; only then are
    :attr:`footer` and :attr:`sha256` available.
    """

    def __init__(self, path: Path, *, parser: LineParser | None = None) -> None:
        self.path = Path(path)
        self._parser = parser or LineParser()
        self._file: IO[bytes] | None = None
        self._line_no = 0
        self._file_sha256 = hashlib.sha256()
        self._sequence: _Sequence | None = None
        self._footer: RunLogFooter | None = None

    def __enter__(self) -> RunLogReader:
        self._file = open_input(self.path, what="run log", cap=MAX_RUN_LOG_BYTES, error=RunLogError)
        try:
            first = self._next_line()
            if first is None:
                raise RunLogError(f"{self.path}: empty file: not a run log")
            record = self._parser.parse(first, self._where())
            if not isinstance(record, RunLogHeader):
                raise RunLogError(
                    f"{self._where()}: expected the header record, found a {record.record!r} record"
                )
            self._sequence = _Sequence(record)
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
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def header(self) -> RunLogHeader:
        if self._sequence is None:
            raise RuntimeError("RunLogReader is used outside its `with` block")
        return self._sequence.header

    @property
    def footer(self) -> RunLogFooter:
        if self._footer is None:
            raise RuntimeError("the footer is known once lines() is exhausted")
        return self._footer

    @property
    def sha256(self) -> str:
        """sha256 of the whole file, once :meth:`lines` is exhausted."""
        if self._footer is None:
            raise RuntimeError("the file hash is known once lines() is exhausted")
        return self._file_sha256.hexdigest()

    def summary(self) -> RunLogSummary:
        return RunLogSummary(self.path, self.sha256, self.header, self.footer)

    def _where(self) -> str:
        return f"{self.path}: line {self._line_no}"

    def _next_line(self) -> bytes | None:
        assert self._file is not None
        try:
            line = self._file.readline(MAX_LINE_BYTES + 1)
        except OSError as exc:
            raise RunLogError(f"cannot read run log {self.path}: {exc.strerror or exc}") from exc
        if not line:
            return None
        self._line_no += 1
        if len(line) > MAX_LINE_BYTES:
            raise RunLogError(
                f"{self._where()}: longer than {MAX_LINE_BYTES} bytes; refused without parsing it",
                hint="no valid run-log line is this long",
            )
        if not line.endswith(b"\n"):
            raise RunLogError(f"{self._where()}: truncated: the last line has no newline")
        self._file_sha256.update(line)
        return line

    def lines(self) -> Iterator[tuple[bytes, RunLogSample]]:
        """Yield each sample with its exact line, then check the footer and the end of file."""
        sequence = self._sequence
        if sequence is None or self._file is None:
            raise RuntimeError("RunLogReader is used outside its `with` block")
        parse = self._parser.parse
        while True:
            line = self._next_line()
            if line is None:
                raise RunLogError(
                    f"{self.path}: truncated: no footer after {sequence.next_index} of "
                    f"{sequence.header.n_samples} samples"
                )
            where = self._where()
            record = parse(line, where)
            if isinstance(record, RunLogSample):
                sequence.sample(record, line, where)
                yield line, record
            elif isinstance(record, RunLogFooter):
                sequence.footer(record, where)
                footer = record
                break
            else:
                raise RunLogError(f"{where}: a second header")
        if self._file.read(1):
            raise RunLogError(f"{self.path}: data after the footer (line {self._line_no})")
        self._footer = footer

    def samples(self) -> Iterator[RunLogSample]:
        for _, sample in self.lines():
            yield sample


def read_run_log(
    path: Path,
) -> Iterator[RunLogHeader | RunLogSample | RunLogFooter]:
    """Yield the header, every sample and the footer of ``path``, each checked as it is read.

    A failure (a :class:`RunLogError`) can come at any line: act on the samples only once the
    footer was yielded.
    """
    with RunLogReader(path) as reader:
        yield reader.header
        yield from reader.samples()
        yield reader.footer


def validate_run_log(path: Path) -> RunLogSummary:
    """Read ``path`` to its end, checking everything; raise :class:`RunLogError` on any failure."""
    with RunLogReader(path) as reader:
        for _ in reader.lines():
            pass
        return reader.summary()


def run_log_sha256(path: Path) -> str:
    """sha256 of the bytes of ``path`` (no validation: see :func:`validate_run_log`)."""
    with open_input(path, what="run log", cap=MAX_RUN_LOG_BYTES, error=RunLogError) as handle:
        try:
            return hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            raise RunLogError(f"cannot read run log {path}: {exc.strerror or exc}") from exc


# --- writing ------------------------------------------------------------------------------------


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
        raise _schema_error(what, exc) from exc


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
        self._sequence: _Sequence | None = None
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
            self._sequence = _Sequence(self._header)
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


if __name__ == "__main__":
    sys.stdout.write(json.dumps(run_log_json_schema(), indent=2, sort_keys=True) + "\n")
