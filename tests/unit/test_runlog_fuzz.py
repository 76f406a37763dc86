"""Property tests of run logs: the reader only ever refuses, valid logs round-trip byte for byte,
and the reader accepts exactly the lines the committed JSON Schema accepts.

The reader validates with the pydantic models the committed schema is generated from, because
``jsonschema`` is 80 times slower (see the docstring of :mod:`detserve.runlog`). These tests are
what makes that sound: ``jsonschema`` with the committed file, refined only in the two documented
ways (numbers keep their written type; ``$`` ends the string, as in ECMA-262), agrees with the
reader on every generated record and on mutations of them.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators

from detserve.canonical import canonical_bytes, canonical_json
from detserve.errors import RunLogError
from detserve.runlog import _CANONICAL_ENCODER as RUNLOG_ENCODER
from detserve.runlog import (
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
    repo = draw(st.from_regex(r"[a-z0-9][a-z0-9._:/-]{0,20}[a-z0-9]", fullmatch=True))
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
            "seed": draw(st.integers(min_value=-(2**63), max_value=2**64 - 1)),
            "max_tokens": 8,
            "concurrency": 1,
            "logprobs": draw(st.integers(0, 20)) if logprobs else None,
        },
        "n_samples": n_samples,
    }


@st.composite
def samples(draw: st.DrawFn, index: int, logprobs: bool) -> dict[str, Any]:
    output = draw(st.lists(token_ids, max_size=8))
    return {
        "index": index,
        "prompt_id": draw(names),
        "prompt_sha256": draw(hex64),
        "prompt_token_ids": draw(st.lists(token_ids, min_size=1, max_size=8)),
        "output_token_ids": output,
        "text": draw(texts),
        "finish_reason": draw(st.sampled_from(["length", "stop", "abort", "eos_token"])),
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


@FUZZ
@given(value=json_values)
def test_the_run_log_encoder_is_canonical_json(value: Any) -> None:
    assert RUNLOG_ENCODER.encode(value) == canonical_json(value)


def _written_type(
    validator: Any, types: str | list[str], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    # JSON Schema has one number type; a canonical run log writes integers as integers (1, not
    # 1.0) and floats as floats (0.0, not 0).
    def matches(kind: str) -> bool:
        if kind == "integer":
            return type(instance) is int
        if kind == "number":
            return type(instance) is float
        return bool(validator.is_type(instance, kind))

    kinds = [types] if isinstance(types, str) else types
    if not any(matches(kind) for kind in kinds):
        yield ValidationError(f"{instance!r} is not written as {kinds}")


def _ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    # ECMA-262 `$` (what JSON Schema specifies) ends the string; Python's also matches before a
    # final newline. Every pattern of the schema ends in `$`.
    assert pattern.endswith("$")
    if isinstance(instance, str) and not re.search(pattern[:-1] + r"\Z", instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


RefinedValidator = validators.extend(
    Draft202012Validator, validators={"type": _written_type, "pattern": _ecma_pattern}
)
REFINED = RefinedValidator(SCHEMA)
PLAIN = Draft202012Validator(SCHEMA)


def _reader_accepts(document: dict[str, Any]) -> bool:
    try:
        line = canonical_bytes(document)
    except ValueError:
        return False
    try:
        LineParser().parse(line, "fuzz")
    except RunLogError:
        return False
    return True


def _valid_documents() -> st.SearchStrategy[dict[str, Any]]:
    def full_header(header: dict[str, Any]) -> dict[str, Any]:
        header["sampling"]["temperature"] = 0.0  # as written: the writer writes a float
        return {"record": "header", "format": "detserve-run-log", "format_version": 1} | header

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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("index", 1.0, id="integer-as-float"),
        pytest.param("prompt_sha256", "a" * 64 + "\n", id="final-newline"),
    ],
)
def test_the_two_documented_refinements(field: str, value: Any) -> None:
    document = {"record": "sample"} | make_sample(0) | {field: value}
    assert PLAIN.is_valid(document) or field == "prompt_sha256"  # 65 chars: maxLength refuses
    assert not REFINED.is_valid(document)
    assert not _reader_accepts(document)


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


# --- the fast canonical check is canonical_json ------------------------------------------------

any_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60)
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False).map(float)
decades = st.builds(
    lambda mantissa, exponent: mantissa * 10.0**exponent,
    st.floats(min_value=-10, max_value=10),
    st.integers(-330, 20),
).filter(math.isfinite)
EDGE_FLOATS = [
    0.0,
    -0.0,
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
    1e21,
    -1.7976931348623157e308,
    *[10.0**e for e in range(-20, 17)],
    *[math.nextafter(10.0**e, 0.0) for e in range(-20, 17)],
]


@st.composite
def any_samples(draw: st.DrawFn) -> RunLogSample:
    output = draw(st.lists(token_ids, max_size=12))
    logprobs = draw(
        st.none()
        | st.lists(
            st.one_of(finite_floats, float32s, decades, st.sampled_from(EDGE_FLOATS)),
            min_size=len(output),
            max_size=len(output),
        )
    )
    document = {
        "record": "sample",
        "index": draw(st.integers(0, 10**9 - 1)),
        "prompt_id": draw(any_text.filter(bool)),
        "prompt_sha256": draw(hex64),
        "prompt_token_ids": draw(st.lists(token_ids, min_size=1, max_size=6)),
        "output_token_ids": output,
        "text": draw(any_text),
        "finish_reason": draw(st.sampled_from(["length", "stop"])),
        "logprobs": logprobs,
    }
    return RunLogSample.model_validate_json(canonical_json(document))


@settings(FUZZ, max_examples=1000)
@given(sample=any_samples())
@example(
    sample=RunLogSample.model_validate_json(
        canonical_json(
            {
                "record": "sample",
                "index": 0,
                "prompt_id": '\x00\x1f\x7f\u2028"\\/',
                "prompt_sha256": "a" * 64,
                "prompt_token_ids": [0],
                "output_token_ids": list(range(len(EDGE_FLOATS))),
                "text": "\b\f\n\r\t\u0001é😀\ufeff",
                "finish_reason": "stop",
                "logprobs": EDGE_FLOATS,
            }
        )
    )
)
def test_fast_sample_line_is_canonical_json(sample: RunLogSample) -> None:
    fast = _fast_sample_line(sample)
    exact = canonical_bytes(sample.model_dump())
    assert fast is None or fast == exact
    if sample.logprobs is None or max(map(abs, sample.logprobs), default=0) < 1e16:
        assert fast == exact  # the fast path is taken: it is what makes reading fast


def test_sample_fields_are_declared_in_canonical_order() -> None:
    # pydantic serialises fields in declaration order; canonical JSON sorts them.
    assert list(RunLogSample.model_fields) == sorted(RunLogSample.model_fields)


def test_non_canonical_floats_are_refused_even_where_rust_would_spell_them() -> None:
    base = {"record": "sample"} | make_sample(0)
    for ryu_spelling in ("-1e-7", "-0.00001234", "-10000000000000000.0"):
        document = base | {"logprobs": [ryu_spelling, *base["logprobs"][1:]]}
        line = canonical_bytes(document).replace(
            f'"{ryu_spelling}"'.encode(), ryu_spelling.encode()
        )
        with pytest.raises(RunLogError, match="not canonical"):
            LineParser().parse(line, "fuzz")
