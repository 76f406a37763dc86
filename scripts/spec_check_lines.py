"""Lines, run logs and transcript segments as docs/spec/run-log.md sections 2, 3 and 6 define
them; part of the independent checker (``scripts/spec_check.py``).

Written from the specification, with Python's standard library and ``rfc8785`` only. Files are
read one bounded line at a time (section 3.7); every failure is a :class:`Refused` naming the
rule of the specification it breaks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import rfc8785

import spec_check_request as request_rules
from spec_check_schema import SchemaError, Validator

MAX_LINE_BYTES: Final = 8 * 1024 * 1024
FORMAT_VERSION: Final = 5
SCHEMA_PATH: Final = (
    Path(__file__).resolve().parent.parent / "src" / "detserve" / "schemas" / "run-log.schema.json"
)
HEADERS: Final = ("header", "transcript")


class Refused(Exception):
    """A failed check: the verdict, its exit status and the rule (section 1.1)."""

    def __init__(self, rule: str, message: str, verdict: str = "invalid", exit_code: int = 2):
        super().__init__(message)
        self.rule, self.message, self.verdict, self.exit_code = rule, message, verdict, exit_code


_validator: Validator | None = None


def validator() -> Validator:
    global _validator
    if _validator is None:
        _validator = Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    return _validator


# --- one line (section 2) ----------------------------------------------------------------------


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise _Duplicate(next(n for n in names if names.count(n) > 1))
    return dict(pairs)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _double(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is beyond a double")
    return value


def _lone_surrogate(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def parse_json(text: str, where: str) -> Any:
    """[line.json] (and duplicate names, which section 2.2 makes a [line.canonical] failure)."""
    try:
        value = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_not_json, parse_float=_double
        )
    except _Duplicate as exc:
        raise Refused("line.canonical", f"{where}: the member name {exc} twice") from None
    except (ValueError, RecursionError) as exc:
        raise Refused("line.json", f"{where}: not one JSON text: {exc}") from None
    if _lone_surrogate(value):
        raise Refused("line.json", f"{where}: an escaped lone surrogate")
    return value


def check_request(request: dict[str, Any], where: str) -> str | None:
    """Section 6.7 (``spec_check_request``); the request's constraint, None when it has none."""
    try:
        return request_rules.check_request(request, where)
    except request_rules.RequestRefused as refused:
        raise Refused(refused.rule, refused.message) from None


def parse_line(line: bytes, where: str) -> dict[str, Any]:
    """Section 2.3, from [line.utf8] to [line.canonical]: the record of a line (LF included)."""
    try:
        text = line[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused("line.utf8", f"{where}: not UTF-8 at byte {exc.start}") from None
    value = parse_json(text, where)
    if (
        isinstance(value, dict)
        and value.get("record") in HEADERS
        and "format_version" in value
        and not (type(value["format_version"]) is int and value["format_version"] == 5)
    ):
        raise Refused(
            "line.version",
            f"{where}: format version {value['format_version']!r:.20}; "
            f"this checker reads {FORMAT_VERSION}",
        )
    try:
        read = validator().validate(value)
    except SchemaError as exc:
        raise Refused("line.schema", f"{where}: {exc}") from None
    if read["record"] == "exchange":
        check_request(read["request"], where)
    try:
        canonical = rfc8785.dumps(read)
    except rfc8785.IntegerDomainError as exc:
        raise Refused("line.integer-range", f"{where}: {exc}") from None
    except rfc8785.CanonicalizationError as exc:
        raise Refused("line.canonical", f"{where}: {exc}") from None
    if canonical + b"\n" != line:
        raise Refused("line.canonical", f"{where}: not the RFC 8785 form of its value")
    return dict(read)


class LineFile:
    """A file read one line at a time, at most MAX_LINE_BYTES + 1 bytes at once ([line.length]);
    the sha256 of the complete lines read so far."""

    def __init__(self, handle: IO[bytes], path: Path) -> None:
        self.handle, self.path = handle, path
        self.number = 0
        self.digest = hashlib.sha256()
        self.tail = b""  # bytes after the last LF, when the file ends without one

    def next(self) -> bytes | None:
        """The next complete line, or None at the end (``tail`` then holds a torn line)."""
        data = self.handle.readline(MAX_LINE_BYTES + 1)
        if not data:
            return None
        if len(data) > MAX_LINE_BYTES:
            raise Refused(
                "line.length",
                f"{self.path}: line {self.number + 1}: longer than {MAX_LINE_BYTES} bytes",
            )
        if not data.endswith(b"\n"):
            self.tail = data
            return None
        self.number += 1
        self.digest.update(data)
        return data

    def where(self) -> str:
        return f"{self.path}: line {self.number}"

    def at_end(self) -> bool:
        return not self.tail and not self.handle.read(1)


# --- run logs (section 3) ----------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class RunLog:
    """A run log read to its end: its file sha256, header and footer."""

    sha256: str = ""
    header: dict[str, Any] = field(default_factory=dict)
    footer: dict[str, Any] = field(default_factory=dict)


def _check_sample(header: dict[str, Any], sample: dict[str, Any], index: int, where: str) -> None:
    if sample["index"] != index:
        raise Refused("log.index", f"{where}: index {sample['index']}, expected {index}")
    if index >= header["n_samples"]:
        raise Refused("log.count", f"{where}: more samples than n_samples {header['n_samples']}")
    sampling, outputs = header["sampling"], len(sample["output_token_ids"])
    if outputs > sampling["max_tokens"]:
        raise Refused("log.max-tokens", f"{where}: {outputs} tokens over {sampling['max_tokens']}")
    if (sample["logprobs"] is None) != (sampling["logprobs"] is None):
        raise Refused("log.logprobs", f"{where}: logprobs present exactly when not asked for")
    if sample["logprobs"] is not None and len(sample["logprobs"]) != outputs:
        raise Refused(
            "log.logprobs", f"{where}: {len(sample['logprobs'])} logprobs, {outputs} tokens"
        )
    set_ = [
        sample[k] is not None for k in ("constraint", "constraint_sha256", "constraint_satisfied")
    ]
    if len(set(set_)) != 1:
        raise Refused("log.constraint", f"{where}: constraint members partly null")
    if sample["constraint_satisfied"] is False and sample["finish_reason"] != "length":
        raise Refused("log.constraint", f"{where}: unsatisfied, finish {sample['finish_reason']}")


def run_log_samples(path: Path, log: RunLog) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Yield each sample line and record of a run log (section 3.7); once exhausted, the whole
    log was verified and ``log`` holds its sha256, header and footer."""
    with path.open("rb") as handle:
        lines = LineFile(handle, path)
        first = lines.next()
        if first is None:
            if lines.tail:
                raise Refused("line.newline", f"{path}: line 1 has no LF")
            raise Refused("log.header", f"{path}: empty")
        header = parse_line(first, lines.where())
        if header["record"] != "header":
            raise Refused("log.header", f"{path}: line 1 is a {header['record']!r} record")
        samples = hashlib.sha256()
        index = 0
        while True:
            data = lines.next()
            if data is None:
                if lines.tail:
                    raise Refused("line.newline", f"{path}: line {lines.number + 1} has no LF")
                raise Refused("log.truncated", f"{path}: no footer")
            record, where = parse_line(data, lines.where()), lines.where()
            if record["record"] == "sample":
                _check_sample(header, record, index, where)
                samples.update(data)
                index += 1
                yield data, record
            elif record["record"] == "footer":
                break
            else:
                raise Refused("log.record", f"{where}: a {record['record']!r} record")
        if index != header["n_samples"]:
            raise Refused("log.count", f"{where}: footer after {index} of {header['n_samples']}")
        if record["n_samples"] != header["n_samples"]:
            raise Refused("log.footer-count", f"{where}: footer n_samples {record['n_samples']}")
        if record["header_sha256"] != sha256_hex(first):
            raise Refused("log.footer-hash", f"{where}: header_sha256 is not the header's")
        if record["samples_sha256"] != samples.hexdigest():
            raise Refused("log.footer-hash", f"{where}: samples_sha256 is not the samples'")
        if not lines.at_end():
            raise Refused("log.end", f"{path}: bytes after the footer")
        log.sha256, log.header, log.footer = lines.digest.hexdigest(), header, record


def verify_run_log(path: Path) -> RunLog:
    log = RunLog()
    for _ in run_log_samples(path, log):
        pass
    return log


# --- transcript segments (section 6) -----------------------------------------------------------


@dataclass
class Segment:
    """A segment read to its end (or its cut)."""

    path: Path
    sha256: str = ""
    header: dict[str, Any] = field(default_factory=dict)
    footer: dict[str, Any] | None = None
    n_exchanges: int = 0
    torn_bytes: int = 0

    @property
    def cut(self) -> bool:
        return self.footer is None


def _check_exchange(exchange: dict[str, Any], index: int, where: str) -> None:
    if exchange["index"] != index:
        raise Refused("segment.index", f"{where}: index {exchange['index']}, expected {index}")
    request = exchange["request"]
    if len(exchange["output_token_ids"]) > request["max_tokens"]:
        raise Refused("exchange.max-tokens", f"{where}: over max_tokens {request['max_tokens']}")
    finish, incomplete = exchange["finish_reason"], exchange["incomplete"]
    if (finish is None) == (incomplete is None):
        raise Refused(
            "exchange.finish", f"{where}: finish_reason {finish!r}, incomplete {incomplete!r}"
        )
    check = exchange["constraint_check"]
    if (check is None) != (check_request(request, where) is None):
        raise Refused("exchange.check", f"{where}: constraint_check {check!r}")
    cut_short = incomplete is not None or finish == "length"
    if (check == "cut" and not cut_short) or (check == "violated" and cut_short):
        raise Refused("exchange.cut", f"{where}: check {check!r}, cut short {cut_short}")
    delivery = exchange["delivery"]
    if delivery == "delivered" and (incomplete is not None or check == "violated"):
        raise Refused("exchange.delivery", f"{where}: 'delivered' with {incomplete or check}")
    if check == "violated" and delivery not in ("withheld", "undelivered"):
        raise Refused("exchange.delivery", f"{where}: a violated output {delivery!r}")
    if delivery == "withheld" and check != "violated":
        raise Refused("exchange.delivery", f"{where}: 'withheld' with check {check!r}")


def segment_exchanges(
    segment: Segment, *, allow_cut: bool
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Yield each exchange line and record of a segment (section 6.6); once exhausted, the
    segment was verified and ``segment`` is filled in."""
    path = segment.path
    with path.open("rb") as handle:
        lines = LineFile(handle, path)
        first = lines.next()
        if first is None:
            if lines.tail:
                raise Refused("line.newline", f"{path}: the header has no LF")
            raise Refused("segment.header", f"{path}: empty")
        header = parse_line(first, lines.where())
        if header["record"] != "transcript":
            raise Refused("segment.header", f"{path}: line 1 is a {header['record']!r} record")
        segment.header = header
        exchanges = hashlib.sha256()
        index = 0
        footer: dict[str, Any] | None = None
        while True:
            data = lines.next()
            if data is None:
                break
            record, where = parse_line(data, lines.where()), lines.where()
            if record["record"] == "exchange":
                _check_exchange(record, index, where)
                exchanges.update(data)
                index += 1
                yield data, record
            elif record["record"] == "transcript-end":
                footer = record
                break
            else:
                raise Refused("segment.record", f"{where}: a {record['record']!r} record")
        if footer is None:
            if lines.tail and not allow_cut:
                raise Refused("line.newline", f"{path}: line {lines.number + 1} has no LF")
            if not allow_cut:
                raise Refused("segment.cut", f"{path}: cut after {index} exchanges")
            segment.torn_bytes = len(lines.tail) + len(handle.read(MAX_LINE_BYTES + 1))
            if segment.torn_bytes > MAX_LINE_BYTES:
                raise Refused("line.length", f"{path}: a torn line over {MAX_LINE_BYTES} bytes")
        else:
            expected = (index, sha256_hex(first), exchanges.hexdigest())
            found = (footer["n_exchanges"], footer["header_sha256"], footer["exchanges_sha256"])
            if found != expected:
                raise Refused("segment.footer", f"{where}: the footer is not the lines'")
            if not lines.at_end():
                raise Refused("segment.end", f"{path}: bytes after the footer")
        segment.sha256, segment.footer, segment.n_exchanges = (
            lines.digest.hexdigest(),
            footer,
            index,
        )


def verify_segment(path: Path, *, allow_cut: bool) -> Segment:
    segment = Segment(path)
    for _ in segment_exchanges(segment, allow_cut=allow_cut):
        pass
    return segment
