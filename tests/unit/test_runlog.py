"""Run logs: what the writer writes, and every way the reader refuses a log."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from detserve.canonical import canonical_bytes, canonical_json
from detserve.errors import EXIT_INPUT, CanonicalJSONError, OutputExistsError, RunLogError
from detserve.runlog import (
    MAX_LINE_BYTES,
    MAX_TEXT_CHARS,
    RunLogFooter,
    RunLogHeader,
    RunLogReader,
    RunLogSample,
    RunLogWriter,
    read_run_log,
    run_log_json_schema,
    run_log_sha256,
    validate_run_log,
    write_run_log,
)
from detserve.runlog import lines as runlog_lines

from .committed import REPO_ROOT, sha256_hex
from .runlog_builders import lines_of, make_header, make_sample, sha, with_footer, write_log

SCHEMA_FILE = REPO_ROOT / "src" / "detserve" / "schemas" / "run-log.schema.json"


def test_written_log_is_canonical_json_lines(tmp_path: Path) -> None:
    path = write_log(tmp_path / "a.runlog.jsonl", 3)
    lines = lines_of(path)
    assert len(lines) == 5
    for line in lines:
        assert line == canonical_bytes(json.loads(line))
    header, footer = json.loads(lines[0]), json.loads(lines[-1])
    assert header["record"] == "header"
    assert header["format"] == "detserve-run-log"
    assert header["format_version"] == 5
    assert footer == {
        "record": "footer",
        "n_samples": 3,
        "header_sha256": sha256_hex(lines[0]),
        "samples_sha256": sha256_hex(b"".join(lines[1:-1])),
    }


def test_two_writes_of_one_run_are_byte_identical(tmp_path: Path) -> None:
    a = write_log(tmp_path / "a.runlog.jsonl", 4)
    b = write_log(tmp_path / "b.runlog.jsonl", 4)
    assert a.read_bytes() == b.read_bytes()


def test_read_gives_back_the_records_and_the_hash(tmp_path: Path) -> None:
    path = write_log(tmp_path / "a.runlog.jsonl", 3)
    records = list(read_run_log(path))
    assert isinstance(records[0], RunLogHeader)
    assert isinstance(records[-1], RunLogFooter)
    samples = records[1:-1]
    assert [s.index for s in samples if isinstance(s, RunLogSample)] == [0, 1, 2]
    first = samples[0]
    assert isinstance(first, RunLogSample)
    assert first.output_token_ids == tuple(make_sample(0)["output_token_ids"])
    summary = validate_run_log(path)
    assert summary.sha256 == run_log_sha256(path) == sha256_hex(path.read_bytes())
    assert summary.n_samples == 3


def test_writer_returns_the_file_hash(tmp_path: Path) -> None:
    path = tmp_path / "a.runlog.jsonl"
    digest = write_run_log(path, make_header(2), [make_sample(0), make_sample(1)])
    assert digest == sha256_hex(path.read_bytes())


def test_writer_takes_typed_records(tmp_path: Path) -> None:
    header = RunLogHeader.model_validate_json(json.dumps(make_header(1)))
    sample = RunLogSample.model_validate_json(json.dumps(make_sample(0)))
    typed = write_run_log(tmp_path / "typed.runlog.jsonl", header, [sample])
    untyped = write_run_log(tmp_path / "dicts.runlog.jsonl", make_header(1), [make_sample(0)])
    assert typed == untyped


@pytest.mark.parametrize("temperature", [0, 0.0, -0.0])
def test_a_whole_float_is_written_as_jcs_writes_it(tmp_path: Path, temperature: float) -> None:
    # RFC 8785 writes numbers as ECMAScript does: 0.0 and -0.0 are 0, -1.0 is -1.
    header = make_header(1)
    header["sampling"]["temperature"] = temperature
    sample = make_sample(0) | {"logprobs": [-1.0, -0.0, -1e-5, -1e-7, *[-0.5] * 8]}
    path = tmp_path / "a.runlog.jsonl"
    write_run_log(path, header, [sample])
    lines = lines_of(path)
    assert b'"temperature":0}' in lines[0]
    assert b'"logprobs":[-1,0,-0.00001,-1e-7,-0.5,' in lines[1]
    assert validate_run_log(path).n_samples == 1


def _no_files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def test_an_exception_while_writing_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.runlog.jsonl"

    def interrupted_sampling() -> None:
        with RunLogWriter(path, make_header(3)) as log:
            log.write(make_sample(0))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_sampling()
    assert _no_files(tmp_path) == []


def test_fewer_samples_than_announced_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.runlog.jsonl"
    with pytest.raises(RunLogError, match="1 samples written; the header announces 3"):
        write_run_log(path, make_header(3), [make_sample(0)])
    assert _no_files(tmp_path) == []


def test_more_samples_than_announced_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.runlog.jsonl"
    with pytest.raises(RunLogError, match="more samples than the header"):
        write_run_log(path, make_header(1), [make_sample(0), make_sample(1)])
    assert _no_files(tmp_path) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"index": 1}, "out of order", id="index"),
        pytest.param({"prompt_sha256": "abc"}, "prompt_sha256", id="bad-sha"),
        pytest.param({"output_token_ids": [-1]}, "output_token_ids", id="negative-token"),
        pytest.param({"logprobs": [float("nan")] * 12}, "not JSON", id="nan"),
        pytest.param({"logprobs": None}, "no logprobs", id="missing-logprobs"),
        pytest.param({"logprobs": [-1.0]}, "1 logprobs for 12 output tokens", id="logprob-count"),
        pytest.param({"output_token_ids": list(range(17))}, "exceed", id="over-max-tokens"),
        pytest.param({"text": "\ud800"}, "not JSON|surrogate", id="lone-surrogate"),
        pytest.param({"index": 2**53}, "index", id="beyond-2**53"),
        pytest.param({"extra": 1}, "extra", id="unknown-key"),
    ],
)
def test_writer_refuses_an_invalid_sample(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    path = tmp_path / "a.runlog.jsonl"
    with pytest.raises(RunLogError) as caught:
        write_run_log(path, make_header(1), [make_sample(0) | change])
    assert re.search(message, caught.value.diagnostics())
    assert _no_files(tmp_path) == []


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        pytest.param("sampling", {"temperature": 0.7}, "temperature", id="temperature"),
        # version 3: the concurrency is the sidecar's; a header that names one is refused
        pytest.param("sampling", {"concurrency": 1}, "concurrency", id="concurrency"),
        pytest.param("pins", {"model_revision": "main"}, "model_revision", id="revision"),
        pytest.param("pins", {"image": "vllm:latest"}, "image", id="image-tag"),
        pytest.param("sampling", {"seed": 2**53}, "sampling.seed", id="seed-beyond-2**53"),
        pytest.param("sampling", {"seed": -1}, "sampling.seed", id="negative-seed"),
    ],
)
def test_writer_refuses_an_invalid_header(
    tmp_path: Path, section: str, change: dict[str, object], message: str
) -> None:
    header = make_header(1)
    header[section] |= change
    with pytest.raises(RunLogError) as caught:
        write_run_log(tmp_path / "a.runlog.jsonl", header, [make_sample(0)])
    assert re.search(message, caught.value.diagnostics())
    assert _no_files(tmp_path) == []


def test_writer_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write_log(tmp_path / "a.runlog.jsonl", 1)
    with pytest.raises(OutputExistsError):
        write_log(path, 1)
    write_run_log(path, make_header(1), [make_sample(0)], force=True)


# --- the reader refuses ------------------------------------------------------------------------


def _refused(path: Path, *patterns: str) -> RunLogError:
    with pytest.raises(RunLogError) as caught:
        validate_run_log(path)
    error = caught.value
    assert error.exit_code == EXIT_INPUT
    text = error.diagnostics()
    assert str(path) in text
    for pattern in patterns:
        assert pattern in text, text
    return error


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


@pytest.fixture
def log_lines(tmp_path: Path) -> list[bytes]:
    return lines_of(write_log(tmp_path / "good.runlog.jsonl", 3))


def test_truncated_log_has_no_footer(tmp_path: Path, log_lines: list[bytes]) -> None:
    path = _write_lines(tmp_path / "t.jsonl", log_lines[:-1])
    _refused(path, "truncated: no footer after 3 of 3 samples")
    path = _write_lines(tmp_path / "t2.jsonl", log_lines[:2])
    _refused(path, "truncated: no footer after 1 of 3 samples")


def test_cut_in_the_middle_of_a_line(tmp_path: Path, log_lines: list[bytes]) -> None:
    data = b"".join(log_lines)
    path = tmp_path / "cut.jsonl"
    path.write_bytes(data[: len(data) - 40])
    _refused(path, "line 5", "truncated: the last line has no newline")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    _refused(path, "empty file")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    _refused(tmp_path / "missing.jsonl", "cannot read run log")
    _refused(tmp_path, "cannot read run log")


def test_invalid_json(tmp_path: Path, log_lines: list[bytes]) -> None:
    log_lines[2] = b'{"record": "sample",\n'
    _refused(_write_lines(tmp_path / "x.jsonl", log_lines), "line 3", "not valid JSON")


def test_schema_violation_names_the_field(tmp_path: Path, log_lines: list[bytes]) -> None:
    sample = json.loads(log_lines[1])
    sample["output_token_ids"][3] = -5
    log_lines[1] = canonical_bytes(sample)
    error = _refused(_write_lines(tmp_path / "x.jsonl", log_lines), "line 2", "schema")
    assert any(detail.startswith("output_token_ids[3]") for detail in error.details)


def test_unknown_record_type(tmp_path: Path, log_lines: list[bytes]) -> None:
    log_lines[2] = canonical_bytes({"record": "comment", "text": "hi"})
    _refused(_write_lines(tmp_path / "x.jsonl", log_lines), "line 3", "schema")


@pytest.mark.parametrize(
    "rewrite",
    [
        pytest.param(lambda d: json.dumps(d, sort_keys=True), id="spaces"),
        pytest.param(
            lambda d: json.dumps(
                dict(reversed(d.items())), separators=(",", ":"), ensure_ascii=False
            ),
            id="key-order",
        ),
        pytest.param(lambda d: json.dumps(d, sort_keys=True, separators=(",", ":")), id="ascii"),
        pytest.param(
            lambda d: canonical_json(d).replace('"index":0', '"index":0,"index":0'),
            id="duplicate-key",
        ),
        pytest.param(lambda d: canonical_json(d).replace("[0,", "[0.0,"), id="float-for-integer"),
        pytest.param(lambda d: canonical_json(d).replace("[0,", "[-0,"), id="negative-zero"),
        pytest.param(
            lambda d: canonical_json(d).replace("-0.125001", "-0.1250010"), id="float-zero"
        ),
        pytest.param(
            lambda d: canonical_json(d).replace("-0.125001", "-1.25001e-1"), id="float-exp"
        ),
    ],
)
def test_non_canonical_line(tmp_path: Path, log_lines: list[bytes], rewrite: object) -> None:
    assert callable(rewrite)
    sample = json.loads(log_lines[1])
    line = (rewrite(sample) + "\n").encode()
    assert line != log_lines[1]
    assert json.loads(line) == sample  # the same record, other bytes
    log_lines[1] = line
    _refused(_write_lines(tmp_path / "x.jsonl", with_footer(log_lines[:-1])), "line 2")


def test_non_canonical_line_message(tmp_path: Path, log_lines: list[bytes]) -> None:
    log_lines[1] = (json.dumps(json.loads(log_lines[1])) + "\n").encode()
    _refused(
        _write_lines(tmp_path / "x.jsonl", with_footer(log_lines[:-1])),
        "line 2: not canonical JSON",
    )


def test_a_record_jcs_cannot_write_is_a_run_log_error(
    tmp_path: Path, log_lines: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unreachable through the models' bounds; if it ever is, the reader names the line.
    def unwritable(record: object) -> bytes:
        raise CanonicalJSONError("not representable as canonical JSON (RFC 8785): 2**53")

    monkeypatch.setattr(runlog_lines, "record_line", unwritable)
    path = _write_lines(tmp_path / "x.jsonl", log_lines)
    with pytest.raises(RunLogError, match=r"line 1: not representable as canonical JSON"):
        validate_run_log(path)


def test_a_version_1_log_is_refused_by_name(tmp_path: Path, log_lines: list[bytes]) -> None:
    # Version 1 lines were Python's json.dumps form: 0.0, not JCS's 0.
    header = json.loads(log_lines[0]) | {"format_version": 1}
    header["sampling"]["temperature"] = 0.0
    log_lines[0] = (json.dumps(header, sort_keys=True, separators=(",", ":")) + "\n").encode()
    error = _refused(
        _write_lines(tmp_path / "v1.jsonl", log_lines),
        "line 1: run-log format version 1; this detserve reads version 5 only",
    )
    assert error.details == ()


def test_a_version_2_log_is_refused_by_name(tmp_path: Path, log_lines: list[bytes]) -> None:
    # Version 2 headers held sampling.concurrency (always 1); version 3 moved it to the sidecar.
    header = json.loads(log_lines[0]) | {"format_version": 2}
    header["sampling"]["concurrency"] = 1
    log_lines[0] = canonical_bytes(header)
    error = _refused(
        _write_lines(tmp_path / "v2.jsonl", log_lines),
        "line 1: run-log format version 2; this detserve reads version 5 only",
    )
    assert error.details == ()
    assert error.hint is not None
    assert "sampling.concurrency" in error.hint


def test_a_seed_beyond_2_53_is_refused_by_the_reader(
    tmp_path: Path, log_lines: list[bytes]
) -> None:
    header = json.loads(log_lines[0])
    header["sampling"]["seed"] = 2**64
    log_lines[0] = (json.dumps(header, sort_keys=True, separators=(",", ":")) + "\n").encode()
    error = _refused(_write_lines(tmp_path / "x.jsonl", log_lines), "line 1", "schema")
    assert any(detail.startswith("sampling.seed") for detail in error.details), error.details


def test_integer_written_as_float_is_refused(tmp_path: Path, log_lines: list[bytes]) -> None:
    log_lines[1] = log_lines[1].replace(b'"index":0', b'"index":0.0')
    _refused(_write_lines(tmp_path / "x.jsonl", with_footer(log_lines[:-1])), "line 2", "index")


def test_invalid_utf8(tmp_path: Path, log_lines: list[bytes]) -> None:
    log_lines[2] = log_lines[2].replace("é".encode(), b"\xc3\x28")
    _refused(_write_lines(tmp_path / "x.jsonl", log_lines), "line 3", "invalid UTF-8")


def test_line_over_the_limit_is_refused_unread(tmp_path: Path, log_lines: list[bytes]) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:
        handle.write(log_lines[0])
        handle.write(b'{"text":"' + b"a" * (MAX_LINE_BYTES + 10) + b'"}\n')
        handle.write(log_lines[-1])
    _refused(path, "line 2", f"longer than {MAX_LINE_BYTES} bytes")


def test_huge_field_within_the_line_limit(tmp_path: Path, log_lines: list[bytes]) -> None:
    sample = json.loads(log_lines[1])
    sample["text"] = "a" * (MAX_TEXT_CHARS + 1)
    log_lines[1] = canonical_bytes(sample)
    error = _refused(_write_lines(tmp_path / "x.jsonl", with_footer(log_lines[:-1])), "line 2")
    assert any(detail.startswith("text:") for detail in error.details)


def test_huge_integer(tmp_path: Path, log_lines: list[bytes]) -> None:
    log_lines[1] = log_lines[1].replace(b'"index":0', b'"index":' + b"9" * 5000)
    _refused(_write_lines(tmp_path / "x.jsonl", with_footer(log_lines[:-1])), "line 2")


def test_data_after_the_footer(tmp_path: Path, log_lines: list[bytes]) -> None:
    _refused(_write_lines(tmp_path / "x.jsonl", [*log_lines, b"\n"]), "data after the footer")
    _refused(
        _write_lines(tmp_path / "y.jsonl", [*log_lines, log_lines[1]]), "data after the footer"
    )


def test_tampered_sample_breaks_the_footer_hash(tmp_path: Path, log_lines: list[bytes]) -> None:
    sample = json.loads(log_lines[2])
    sample["output_token_ids"][0] += 1
    log_lines[2] = canonical_bytes(sample)
    error = _refused(_write_lines(tmp_path / "x.jsonl", log_lines), "line 5", "footer's hash")
    assert error.hint is not None


def test_a_changed_header_line_breaks_the_footer_hash(
    tmp_path: Path, log_lines: list[bytes]
) -> None:
    # One pin edited and the header re-serialised canonically: a valid header line on its own,
    # with the footer and every sample line as written. Only the footer's header hash sees it.
    original = log_lines[0]
    header = json.loads(original)
    header["pins"]["model_revision"] = "e" * 40
    log_lines[0] = canonical_bytes(header)
    RunLogHeader.model_validate_json(log_lines[0])
    error = _refused(
        _write_lines(tmp_path / "x.jsonl", log_lines),
        "line 5: the header line does not match the footer's hash",
    )
    assert error.details == (
        f"footer: {sha256_hex(original)}",
        f"header: {sha256_hex(log_lines[0])}",
    )
    assert error.hint == "the log was changed after it was written"


def test_footer_count_must_match(tmp_path: Path, log_lines: list[bytes]) -> None:
    footer = json.loads(log_lines[-1])
    footer["n_samples"] = 4
    log_lines[-1] = canonical_bytes(footer)
    _refused(_write_lines(tmp_path / "x.jsonl", log_lines), "line 5", "footer's n_samples")


def test_footer_before_the_last_sample(tmp_path: Path, log_lines: list[bytes]) -> None:
    lines = with_footer(log_lines[:3])  # header, two samples, footer
    _refused(_write_lines(tmp_path / "x.jsonl", lines), "line 4", "footer after 2 samples")


def test_samples_out_of_order(tmp_path: Path, log_lines: list[bytes]) -> None:
    lines = [log_lines[0], log_lines[2], log_lines[1], log_lines[3]]
    _refused(_write_lines(tmp_path / "x.jsonl", with_footer(lines)), "line 2", "out of order")


def test_first_line_must_be_the_header(tmp_path: Path, log_lines: list[bytes]) -> None:
    _refused(_write_lines(tmp_path / "x.jsonl", log_lines[1:]), "line 1", "expected the header")


def test_second_header(tmp_path: Path, log_lines: list[bytes]) -> None:
    lines = [log_lines[0], log_lines[0], *log_lines[1:]]
    _refused(_write_lines(tmp_path / "x.jsonl", lines), "line 2", "a second header")


def test_logprobs_must_follow_the_header(tmp_path: Path) -> None:
    lines = lines_of(write_log(tmp_path / "plain.jsonl", 2, logprobs=False))
    sample = json.loads(lines[1])
    sample["logprobs"] = [-1.0] * len(sample["output_token_ids"])
    lines[1] = canonical_bytes(sample)
    _refused(
        _write_lines(tmp_path / "x.jsonl", with_footer(lines[:-1])),
        "line 2",
        "the header did not request them",
    )


def test_reader_api_outside_its_block(tmp_path: Path) -> None:
    path = write_log(tmp_path / "a.jsonl", 1)
    reader = RunLogReader(path)
    with pytest.raises(RuntimeError):
        _ = reader.header
    with reader:
        with pytest.raises(RuntimeError):
            _ = reader.footer
        assert [s.index for s in reader.samples()] == [0]
        assert reader.footer.n_samples == 1


# --- the committed schema ----------------------------------------------------------------------


def test_committed_schema_is_the_generated_one() -> None:
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == run_log_json_schema(), (
        "regenerate it: .venv/bin/python -m detserve.runlog > "
        "src/detserve/schemas/run-log.schema.json"
    )


def test_schema_is_package_data() -> None:
    packaged = resources.files("detserve").joinpath("schemas/run-log.schema.json")
    assert json.loads(packaged.read_text(encoding="utf-8"))["$id"].endswith("run-log.schema.json")


def test_schema_is_draft_2020_12_and_valid() -> None:
    from jsonschema import Draft202012Validator

    schema = run_log_json_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_prompt_sha_is_any_sha256() -> None:
    assert len(sha("x")) == 64
