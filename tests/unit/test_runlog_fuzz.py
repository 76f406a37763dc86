"""Property tests of run logs: the reader only ever refuses, valid logs round-trip byte for byte,
and the reader accepts exactly the lines the committed JSON Schema accepts.

The reader validates with the pydantic models the committed schema is generated from, because
``jsonschema`` is 80 times slower (see the docstring of :mod:`detserve.runlog`). These tests are
what makes that sound: ``jsonschema`` with the committed file, refined only in the one documented
way (``$`` ends the string, as in ECMA-262), agrees with the reader on every generated record and
on mutations of them. And the reader's fast canonical check (pydantic's serialisation, respelled)
is ``rfc8785``'s on generated samples: floats of every magnitude, all of Unicode, the edge cases.
"""

from __future__ import annotations

import copy
import json
import math
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators

from detserve.canonical import MAX_EXACT_INTEGER, canonical_bytes, canonical_json
from detserve.errors import CanonicalJSONError, RunLogError
from detserve.runlog import (
    FORMAT_VERSION,
    LineParser,
    RunLogHeader,
    RunLogReader,
    RunLogSample,
    RunLogWriter,
    _fast_sample_line,
    read_run_log,
    validate_run_log,
    write_run_log,
)

from .committed import REPO_ROOT
from .runlog_builders import make_header, make_sample

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SCHEMA = json.loads(
    (REPO_ROOT / "src" / "detserve" / "schemas" / "run-log.schema.json").read_text("utf-8")
)

HEX = "0123456789abcdef"
hex64 = st.text(alphabet=HEX, min_size=64, max_size=64)
token_ids = st.integers(min_value=0, max_value=2**31 - 1)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
names = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20)


# --- valid logs --------------------------------------------------------------------------------


@st.composite
def headers(draw: st.DrawFn, n_samples: int, logprobs: bool) -> dict[str, Any]:
    repo = draw(
        st.from_regex(
            r"([a-z0-9][a-z0-9._:-]{0,8}/){0,2}[a-z0-9]([a-z0-9._-]{0,8}[a-z0-9])?", fullmatch=True
        )
    )
    return {
        "pins": {
            "model_id": draw(
                st.from_regex(
                    r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}/[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True
                )
            ),
            "model_revision": draw(st.text(alphabet=HEX, min_size=40, max_size=40)),
            "manifest_sha256": draw(hex64),
            "image": f"{repo}@sha256:{draw(hex64)}",
            "prompt_bundle_sha256": draw(hex64),
            "vllm_version": draw(names),
            "engine_args": draw(st.lists(texts, max_size=4)),
            "served_model_name": draw(names),
            "environment": draw(
                st.dictionaries(
                    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), texts, max_size=3
                )
            ),
            "entrypoint": draw(st.none() | st.lists(texts, max_size=3)),
            "device": {
                "kind": draw(st.sampled_from(["cpu", "nvidia"])),
                "gpus": draw(st.integers(0, 8)),
            },
        },
        "sampling": {
            "temperature": draw(st.sampled_from([0.0, 0, -0.0])),
            "seed": draw(st.integers(min_value=0, max_value=MAX_EXACT_INTEGER)),
            "max_tokens": 8,
            "logprobs": draw(st.integers(0, 20)) if logprobs else None,
        },
        "n_samples": n_samples,
    }


@st.composite
def constraint_fields(draw: st.DrawFn, finish_reason: str) -> dict[str, Any]:
    """The constraint fields of a valid sample: all null, or all set (unsatisfied only when the
    output was cut short)."""
    kind = draw(st.none() | st.sampled_from(["json_schema", "regex", "choice", "grammar"]))
    if kind is None:
        return {"constraint": None, "constraint_sha256": None, "constraint_satisfied": None}
    satisfied = draw(st.booleans()) if finish_reason == "length" else True
    return {
        "constraint": kind,
        "constraint_sha256": draw(hex64),
        "constraint_satisfied": satisfied,
    }


@st.composite
def samples(draw: st.DrawFn, index: int, logprobs: bool) -> dict[str, Any]:
    output = draw(st.lists(token_ids, max_size=8))
    finish_reason = draw(st.sampled_from(["length", "stop", "abort", "eos_token"]))
    return {
        "index": index,
        "prompt_id": draw(names),
        "prompt_sha256": draw(hex64),
        "request_sha256": draw(hex64),
        "kind": draw(st.sampled_from(["completion", "chat"])),
        **draw(constraint_fields(finish_reason)),
        "prompt_token_ids": draw(st.lists(token_ids, min_size=1, max_size=8)),
        "output_token_ids": output,
        "text": draw(texts),
        "finish_reason": finish_reason,
        "logprobs": (
            draw(st.lists(finite_floats, min_size=len(output), max_size=len(output)))
            if logprobs
            else None
        ),
    }


@st.composite
def run_logs(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    n = draw(st.integers(1, 4))
    logprobs = draw(st.booleans())
    header = draw(headers(n, logprobs))
    return header, [draw(samples(i, logprobs)) for i in range(n)]


@FUZZ
@given(log=run_logs())
def test_valid_logs_round_trip_byte_for_byte(
    tmp_path_factory: pytest.TempPathFactory, log: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    directory = tmp_path_factory.mktemp("roundtrip")
    header, sample_dicts = log
    first = directory / "first.runlog.jsonl"
    digest = write_run_log(first, header, sample_dicts)

    records = list(read_run_log(first))
    assert isinstance(records[0], RunLogHeader)
    read_samples = [r for r in records if isinstance(r, RunLogSample)]
    for written, read in zip(sample_dicts, read_samples, strict=True):
        assert read.output_token_ids == tuple(written["output_token_ids"])
        assert read.text == written["text"]
        if written["logprobs"] is not None:
            assert read.logprobs == tuple(written["logprobs"])

    second = directory / "second.runlog.jsonl"
    assert write_run_log(second, records[0], read_samples) == digest
    assert second.read_bytes() == first.read_bytes()
    assert validate_run_log(second).sha256 == digest


# --- the reader only ever refuses --------------------------------------------------------------


def _read(path: Path) -> None:
    try:
        validate_run_log(path)
    except RunLogError as error:
        message = error.diagnostics()
    else:
        return
    assert str(path) in message


@FUZZ
@given(data=st.binary(max_size=2000))
@example(data=b"")
@example(data=b"\n")
@example(data=b"\xff\xfe\n")
@example(data=b'{"record":"header"}\n')
@example(data=b"[" * 5000 + b"\n")
@example(data=b'{"index":' + b"9" * 5000 + b"}\n")
@example(data=b'{"logprobs":[NaN, Infinity]}\n')
def test_arbitrary_bytes_raise_only_run_log_errors(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("bytes") / "x.runlog.jsonl"
    path.write_bytes(data)
    _read(path)


@pytest.fixture(scope="module")
def good_log(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("good") / "good.runlog.jsonl"
    write_run_log(path, make_header(3), [make_sample(i) for i in range(3)])
    return path.read_bytes()


@FUZZ
@given(
    position=st.floats(min_value=0, max_value=1, exclude_max=True),
    action=st.sampled_from(["flip", "delete", "insert", "truncate", "duplicate"]),
    byte=st.integers(0, 255),
)
def test_mutated_logs_raise_only_run_log_errors(
    tmp_path_factory: pytest.TempPathFactory,
    good_log: bytes,
    position: float,
    action: str,
    byte: int,
) -> None:
    # The footer hashes the header line and every sample line: any change anywhere must fail.
    at = int(position * len(good_log))
    if action == "flip":
        assume(good_log[at] != byte)
        data = good_log[:at] + bytes([byte]) + good_log[at + 1 :]
    elif action == "delete":
        data = good_log[:at] + good_log[at + 1 :]
    elif action == "insert":
        data = good_log[:at] + bytes([byte]) + good_log[at:]
    elif action == "truncate":
        data = good_log[:at]
    else:
        data = good_log[:at] + good_log[at:] + good_log[at:]
    path = tmp_path_factory.mktemp("mutated") / "x.runlog.jsonl"
    path.write_bytes(data)
    with pytest.raises(RunLogError):
        validate_run_log(path)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=8), st.integers() | texts, max_size=4))
def test_writer_refuses_any_bad_header_with_a_run_log_error(
    tmp_path_factory: pytest.TempPathFactory, header: dict[str, Any]
) -> None:
    path = tmp_path_factory.mktemp("writer") / "x.runlog.jsonl"
    with pytest.raises(RunLogError):
        RunLogWriter(path, header)
    assert not path.exists()


# --- the encoder, the schema and the reader agree ---------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite_floats | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


def _ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    # ECMA-262 `$` (what JSON Schema specifies) ends the string; Python's also matches before a
    # final newline. Every pattern of the schema ends in `$`.
    assert pattern.endswith("$")
    if isinstance(instance, str) and not re.search(pattern[:-1] + r"\Z", instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


RefinedValidator = validators.extend(Draft202012Validator, validators={"pattern": _ecma_pattern})
REFINED = RefinedValidator(SCHEMA)
PLAIN = Draft202012Validator(SCHEMA)


def _reader_accepts(document: dict[str, Any]) -> bool:
    try:
        line = canonical_bytes(document)
    except CanonicalJSONError:
        # No JCS line holds it (an integer beyond 2**53 - 1): the reader must refuse it as any
        # JSON writes it.
        line = (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode()
        with pytest.raises(RunLogError):
            LineParser().parse(line, "fuzz")
        return False
    try:
        LineParser().parse(line, "fuzz")
    except RunLogError:
        return False
    return True


def _valid_documents() -> st.SearchStrategy[dict[str, Any]]:
    def full_header(header: dict[str, Any]) -> dict[str, Any]:
        version = {"format_version": FORMAT_VERSION}
        return {"record": "header", "format": "detserve-run-log"} | version | header

    def full_footer(digest: str) -> dict[str, Any]:
        return {
            "record": "footer",
            "n_samples": 3,
            "header_sha256": digest,
            "samples_sha256": digest,
        }

    return st.one_of(
        headers(2, True).map(full_header),
        headers(2, False).map(full_header),
        samples(0, True).map(lambda s: {"record": "sample"} | s),
        samples(5, False).map(lambda s: {"record": "sample"} | s),
        hex64.map(full_footer),
    )


tricky_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            -1,
            0,
            1,
            1.0,
            0.0,
            -0.0,
            True,
            2**31 - 1,
            2**31,
            MAX_EXACT_INTEGER,
            MAX_EXACT_INTEGER + 1,
            -MAX_EXACT_INTEGER,
            float(MAX_EXACT_INTEGER + 1),
            5.0,
            1e300,
            2**63,
            2**64,
            -(2**63) - 1,
            "",
            "a" * 64,
            "A" * 64,
            "a" * 64 + "\n",
            "a" * 40,
            "repo@sha256:" + "a" * 64,
            "repo@sha256:" + "a" * 64 + "\n",
            "Org/Name",
            "Org/Name\n",
            "length\n",
            [],
            [1.5],
            [0],
            [0.0],
            [-1],
            {},
            None,
            "header",
            "sample",
            "footer",
        ]
    ),
)


def _paths(document: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    if isinstance(document, dict):
        for key, value in document.items():
            found.append((*prefix, key))
            found.extend(_paths(value, (*prefix, key)))
    return found


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    document = copy.deepcopy(draw(_valid_documents()))
    for _ in range(draw(st.integers(0, 2))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(tricky_values)
        elif action == "delete":
            del parent[path[-1]]
        else:
            parent[draw(st.text(max_size=6))] = draw(tricky_values)
    return document


@settings(FUZZ, max_examples=600)
@given(document=mutated_documents())
def test_reader_and_committed_schema_agree(document: dict[str, Any]) -> None:
    assert _reader_accepts(document) == REFINED.is_valid(document), (
        sorted(e.message for e in REFINED.iter_errors(document)),
        document,
    )


@FUZZ
@given(document=_valid_documents())
def test_valid_documents_pass_the_plain_schema_too(document: dict[str, Any]) -> None:
    assert _reader_accepts(document)
    assert PLAIN.is_valid(document)


def test_the_documented_refinement() -> None:
    document = {"record": "sample"} | make_sample(0) | {"finish_reason": "length\n"}
    assert PLAIN.is_valid(document)
    assert not REFINED.is_valid(document)
    assert not _reader_accepts(document)


def test_a_whole_float_in_an_integer_field_is_one_number() -> None:
    # JCS, like JSON Schema, has one number type: 1.0 is written 1, and both accept it.
    document = {"record": "sample"} | make_sample(0) | {"index": 1.0}
    assert b'"index":1,' in canonical_bytes(document)
    assert PLAIN.is_valid(document)
    assert _reader_accepts(document)


def test_reader_with_one_parser_for_two_logs(tmp_path: Path) -> None:
    parser = LineParser()
    a = tmp_path / "a.runlog.jsonl"
    write_run_log(a, make_header(2), [make_sample(0), make_sample(1)])
    with RunLogReader(a, parser=parser) as first, RunLogReader(a, parser=parser) as second:
        for (line_a, sample_a), (line_b, sample_b) in zip(
            first.lines(), second.lines(), strict=True
        ):
            assert line_a == line_b
            assert sample_a is sample_b  # validated once


# --- the fast canonical check is rfc8785's ---------------------------------------------------

any_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60)
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False).map(float)
decades = st.builds(
    lambda mantissa, exponent: mantissa * 10.0**exponent,
    st.floats(min_value=-10, max_value=10),
    st.integers(-330, 24),
).filter(math.isfinite)
# Every bit pattern: every exponent of the double range is as likely as any other.
any_doubles = (
    st.integers(0, 2**64 - 1)
    .map(lambda bits: struct.unpack("<d", struct.pack("<Q", bits))[0])
    .filter(math.isfinite)
)
whole_floats = st.integers(-(2**60), 2**60).map(float)
# Where pydantic-core and ECMAScript switch between positional and exponent notation.
BOUNDARIES = [1e-7, 1e-6, 1e-5, 1e-4, 1.0, 1e15, 1e16, 1e17, 1e20, 1e21, 1e22]
EDGE_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    -3.0,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e-05,
    -1e-05,
    9.999999999999999e-06,
    1e-04,
    9.999999999999999e-05,
    1.0000000000000001e-04,
    1e15,
    9999999999999998.0,
    1e16,
    1.5e16,
    12345678901234567e4,
    1e21,
    -1.7976931348623157e308,
    float(MAX_EXACT_INTEGER),
    *[10.0**e for e in range(-20, 23)],
    *[math.nextafter(10.0**e, 0.0) for e in range(-20, 23)],
    *[math.nextafter(b, direction) for b in BOUNDARIES for direction in (0.0, math.inf)],
]
logprob_values = st.one_of(
    finite_floats,
    float32s,
    decades,
    any_doubles,
    whole_floats,
    st.sampled_from(EDGE_FLOATS),
    st.sampled_from(EDGE_FLOATS).map(lambda f: -f),
)


@st.composite
def any_samples(draw: st.DrawFn) -> RunLogSample:
    output = draw(st.lists(token_ids, max_size=12))
    logprobs = draw(
        st.none() | st.lists(logprob_values, min_size=len(output), max_size=len(output))
    )
    finish_reason = draw(st.sampled_from(["length", "stop"]))
    document = {
        "record": "sample",
        "index": draw(st.integers(0, 10**9 - 1)),
        "prompt_id": draw(any_text.filter(bool)),
        "prompt_sha256": draw(hex64),
        "request_sha256": draw(hex64),
        "kind": draw(st.sampled_from(["completion", "chat"])),
        **draw(constraint_fields(finish_reason)),
        "prompt_token_ids": draw(st.lists(token_ids, min_size=1, max_size=6)),
        "output_token_ids": output,
        "text": draw(any_text),
        "finish_reason": finish_reason,
        "logprobs": logprobs,
    }
    return RunLogSample.model_validate_json(canonical_json(document))


def _jcs_line(sample: RunLogSample) -> bytes:
    # rfc8785 itself, not through detserve, on the plain JSON form of the record.
    return rfc8785.dumps(sample.model_dump(mode="json")) + b"\n"


EDGE_SAMPLE = RunLogSample.model_validate_json(
    canonical_json(
        {
            "record": "sample",
            "index": 0,
            "prompt_id": '\x00\x1f\x7f\u2028"\\/',
            "prompt_sha256": "a" * 64,
            "request_sha256": "b" * 64,
            "kind": "chat",
            "constraint": "regex",
            "constraint_sha256": "c" * 64,
            "constraint_satisfied": True,
            "prompt_token_ids": [0],
            "output_token_ids": list(range(2 * len(EDGE_FLOATS))),
            "text": "\b\f\n\r\t\u0001é😀\ufeff\U0010ffff",
            "finish_reason": "stop",
            "logprobs": [*EDGE_FLOATS, *(-f for f in EDGE_FLOATS)],
        }
    )
)


@settings(FUZZ, max_examples=1500)
@given(sample=any_samples())
@example(sample=EDGE_SAMPLE)
def test_fast_sample_line_is_rfc8785(sample: RunLogSample) -> None:
    assert _fast_sample_line(sample) == _jcs_line(sample)


@settings(FUZZ, max_examples=1500)
@given(values=st.lists(logprob_values, min_size=1, max_size=64))
def test_fast_floats_are_rfc8785(values: list[float]) -> None:
    # Floats alone, many to a line: the respelling is the part that can go wrong.
    sample = EDGE_SAMPLE.model_copy(
        update={"logprobs": tuple(values), "output_token_ids": tuple(range(len(values)))}
    )
    assert _fast_sample_line(sample) == _jcs_line(sample)


def test_sample_fields_are_declared_in_canonical_order() -> None:
    # pydantic serialises fields in declaration order; JCS sorts them by UTF-16 code units.
    names = list(RunLogSample.model_fields)
    assert names == sorted(names, key=lambda name: name.encode("utf-16-be"))


@pytest.mark.parametrize(
    ("spelling", "value"),
    [
        # pydantic-core's spellings, which the fast path respells
        ("-1.0", -1.0),
        ("-0.0", -0.0),
        ("0.0", 0.0),
        ("-1.234e-6", -1.234e-6),
        ("-1e-6", -1e-6),
        ("-1.5e+16", -1.5e16),
        ("-1e+20", -1e20),
        # Python's repr, the version 1 form
        ("-1e-07", -1e-7),
        ("-1.234e-05", -1.234e-5),
        ("-1e+16", -1e16),
        # other spellings of the same double
        ("-0", -0.0),
        ("-1E-7", -1e-7),
        ("-1e+21", None),
        ("-0.10", -0.1),
    ],
)
def test_non_canonical_floats_are_refused(spelling: str, value: float | None) -> None:
    base = {"record": "sample"} | make_sample(0)
    document = base | {"logprobs": ["PLACEHOLDER", *base["logprobs"][1:]]}
    line = canonical_bytes(document).replace(b'"PLACEHOLDER"', spelling.encode())
    if value is None:  # the canonical spelling: accepted
        LineParser().parse(line, "fuzz")
        return
    assert json.loads(line)["logprobs"][0] == value
    with pytest.raises(RunLogError, match="not canonical"):
        LineParser().parse(line, "fuzz")
