"""One bounded line reader for both line formats, and open_log telling them apart.

Every bound the shared reader (``runlog.lines.LineFile``) enforces holds for a sampled run log and
for a gateway transcript segment alike, whether the file is read by its own reader or through
``open_log``: a line over the limit, a last line without its newline, invalid UTF-8, data after
the footer, an empty file, a file over the size limit. ``open_log`` decides the kind from the
first line alone, hashes that line with the rest, and refuses a file that is neither (exit 2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from detserve.errors import EXIT_INPUT, RunLogError, UsageError
from detserve.runlog import lines as lines_module
from detserve.runlog import open_log, validate_run_log
from detserve.runlog.kinds import is_transcript, open_pair
from detserve.runlog.models import MAX_LINE_BYTES
from detserve.runlog.reader import RunLogReader
from detserve.runlog.transcript import TranscriptReader, TranscriptWriter, validate_transcript

from .committed import CliRunner
from .runlog_builders import write_log
from .test_transcript import HEADER, exchange

KINDS = ("run log", "transcript")


def _valid(kind: str, directory: Path) -> Path:
    """A valid file of ``kind`` with a header, two records and a footer."""
    if kind == "run log":
        return write_log(directory / "a.runlog.jsonl", 2)
    path = directory / "a.transcript.jsonl"
    with TranscriptWriter(path, HEADER) as writer:
        for number in range(2):
            writer.append(exchange(number))
    return path


def _own_reader(kind: str) -> Callable[[Path], object]:
    return validate_run_log if kind == "run log" else validate_transcript


def _through_open_log(path: Path) -> str:
    with open_log(path) as log:
        for _ in log.lines():
            pass
        return log.summary().sha256


def _refused_both_ways(kind: str, path: Path, *patterns: str) -> None:
    """Refused by the kind's own reader and through open_log, each with every pattern."""
    for read in (_own_reader(kind), _through_open_log):
        with pytest.raises(RunLogError) as refused:
            read(path)
        assert refused.value.exit_code == EXIT_INPUT
        for pattern in patterns:
            assert pattern in refused.value.message, (read, refused.value.message)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("kind", KINDS)
def test_a_valid_file_is_hashed_as_the_bytes_it_holds_through_open_log(
    kind: str, tmp_path: Path
) -> None:
    # The first line is read once, to decide the kind, and is hashed with the rest.
    path = _valid(kind, tmp_path)
    assert _through_open_log(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", KINDS)
def test_a_line_over_the_limit_is_refused(kind: str, tmp_path: Path) -> None:
    path = _valid(kind, tmp_path)
    lines = _lines(path)
    lines[1] = b"x" * (MAX_LINE_BYTES + 1) + b"\n"
    path.write_bytes(b"".join(lines))
    _refused_both_ways(kind, path, f"line 2: longer than {MAX_LINE_BYTES} bytes")


@pytest.mark.parametrize("kind", KINDS)
def test_a_first_line_over_the_limit_is_refused(kind: str, tmp_path: Path) -> None:
    path = _valid(kind, tmp_path)
    lines = _lines(path)
    lines[0] = lines[0][:-1] + b" " * MAX_LINE_BYTES + b"\n"
    path.write_bytes(b"".join(lines))
    _refused_both_ways(kind, path, f"line 1: longer than {MAX_LINE_BYTES} bytes")


@pytest.mark.parametrize("kind", KINDS)
def test_a_last_line_without_its_newline_is_refused(kind: str, tmp_path: Path) -> None:
    path = _valid(kind, tmp_path)
    path.write_bytes(path.read_bytes()[:-1])
    _refused_both_ways(kind, path, "line 4: truncated: the last line has no newline")


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_utf8_is_refused(kind: str, tmp_path: Path) -> None:
    path = _valid(kind, tmp_path)
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"text":"', b'"text":"\xff', 1)
    path.write_bytes(b"".join(lines))
    _refused_both_ways(kind, path, "line 3: invalid UTF-8")


@pytest.mark.parametrize("kind", KINDS)
def test_data_after_the_footer_is_refused(kind: str, tmp_path: Path) -> None:
    path = _valid(kind, tmp_path)
    path.write_bytes(path.read_bytes() + b"\n")
    _refused_both_ways(kind, path, "data after the footer (line 4)")


@pytest.mark.parametrize("kind", KINDS)
def test_an_empty_file_is_refused(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(RunLogError, match=f"empty file: not a {kind}"):
        _own_reader(kind)(path)
    with pytest.raises(RunLogError, match="empty file: not a run log"):
        _through_open_log(path)


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_over_the_size_limit_is_refused_before_it_is_read(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _valid(kind, tmp_path)
    monkeypatch.setattr(lines_module, "MAX_RUN_LOG_BYTES", path.stat().st_size - 1)
    _refused_both_ways(kind, path, "over the limit of")


def test_open_log_picks_the_reader_by_the_first_line(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "t").mkdir()
    run_log, transcript = _valid("run log", tmp_path / "r"), _valid("transcript", tmp_path / "t")
    with open_log(run_log) as log:
        assert type(log) is RunLogReader
    with open_log(transcript) as log:
        assert type(log) is TranscriptReader
    assert is_transcript(transcript)
    assert not is_transcript(run_log)
    assert not is_transcript(tmp_path / "missing.jsonl")


def test_a_transcript_header_of_another_version_is_still_read_as_a_transcript(
    tmp_path: Path,
) -> None:
    # The kind is decided before anything is validated; the transcript reader then names the
    # version, and a pair with a run log is a usage error, not an invalid log.
    path = _valid("transcript", tmp_path)
    lines = _lines(path)
    lines[0] = lines[0].replace(b'"format_version":5', b'"format_version":4', 1)
    path.write_bytes(b"".join(lines))
    log = open_log(path)
    log.close()
    assert type(log) is TranscriptReader
    (tmp_path / "r").mkdir()
    run_log = _valid("run log", tmp_path / "r")
    with pytest.raises(UsageError), open_pair(run_log, path, RunLogReader, refusal="kinds"):
        pass


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"", "empty file: not a run log"),
        (b"not a log\n", "line 1: not valid JSON"),
        (b'{"record":"footer"}\n', "line 1: does not match the run-log schema"),
        (b"\xff\xfe\n", "line 1: invalid UTF-8"),
    ],
)
def test_open_log_refuses_a_file_that_is_neither(
    content: bytes, pattern: str, tmp_path: Path, cli: CliRunner
) -> None:
    path = tmp_path / "neither.jsonl"
    path.write_bytes(content)
    with pytest.raises(RunLogError, match=pattern) as refused:
        _through_open_log(path)
    assert refused.value.exit_code == EXIT_INPUT
    for command in ("validate", "show"):
        ran = cli("runlog", command, path)
        assert ran.code == EXIT_INPUT, ran.text
        assert pattern.split(": ", 1)[-1] in ran.err


def test_a_pair_refuses_the_other_kind_before_validating_either(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "t").mkdir()
    run_log, transcript = _valid("run log", tmp_path / "r"), _valid("transcript", tmp_path / "t")
    missing = tmp_path / "missing.runlog.jsonl"
    with (
        pytest.raises(UsageError, match="kinds"),
        open_pair(transcript, run_log, TranscriptReader, refusal="kinds", allow_cut=True),
    ):
        pass
    # A file that cannot be read counts as a run log: the other kind's pair is a usage error,
    # and a run-log pair raises the read error.
    with (
        pytest.raises(UsageError, match="kinds"),
        open_pair(transcript, missing, TranscriptReader, refusal="kinds"),
    ):
        pass
    with (
        pytest.raises(RunLogError, match="cannot read run log"),
        open_pair(run_log, missing, RunLogReader, refusal="kinds"),
    ):
        pass
    with open_pair(run_log, run_log, RunLogReader, refusal="kinds") as (log_a, log_b):
        assert log_a.header == log_b.header
