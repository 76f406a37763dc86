"""A constraint compiles and is checked in a child process with a time limit: a schema pattern
that backtracks or an ambiguous grammar cannot hang detserve (sampling and replay stop with exit
2, the gateway records ``not_checked``), and a schema's references never leave the schema."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Literal

import pytest
from pydantic import ValidationError

import detserve.constraint_check as constraint_check
from detserve.canonical import canonical_json
from detserve.constraint_check import accepts
from detserve.constraints import MAX_SCHEMA_DEPTH, json_shape
from detserve.gateway.admission import Policy, Refused, parse_body
from detserve.gateway.output_check import check_output
from detserve.request_kinds import (
    Constraint,
    ConstraintUncheckable,
    GenerationParams,
    sample_record,
)

from .test_gateway_constraints import admit_json, request
from .test_requests import Answer, Sender, record

#: every binary bracketing of the text is a derivation: Earley time grows as the cube of its
#: length (120 characters take about a second here, 400 about half a minute)
AMBIGUOUS = 'start: x\nx: x x | "a"'
SLOW_TEXT = "a" * 400


#: Python's re backtracks for ever on this pattern over a run of "a" not followed by "c"
BACKTRACKING_SCHEMA = {"type": "string", "pattern": "^(a|aa)*c$"}


def test_the_child_answers_as_the_libraries_do() -> None:
    assert accepts("grammar", 'start: "yes" | "no"', "no") == (True, "")
    assert accepts("grammar", 'start: "yes" | "no"', "maybe") == (False, "")
    schema = canonical_json({"type": "object", "required": ["a"]})
    assert accepts("json_schema", schema, '{"a": 1}') == (True, "")
    assert accepts("json_schema", schema, '{"b": 1}') == (False, "")
    assert accepts("json_schema", schema, '{"a": NaN}') == (False, "")
    unresolvable = canonical_json({"$ref": "https://example.invalid/s.json"})
    verdict, reason = accepts("json_schema", unresolvable, "{}")
    assert verdict is None
    assert "'https://example.invalid/s.json' does not resolve inside the schema" in reason


def test_the_child_yields_the_cpu_to_its_parent() -> None:
    """A compile or check may take a core for its whole limit: the child runs below the
    gateway's priority, so the event loop (and /health) is not one of two equals on a busy
    machine (bench_gateway_hostile.py measures what that bought)."""
    constraint_check.compile_problem("regex", "a")  # the child is up
    assert constraint_check._pool is not None
    (child,) = constraint_check._pool._pool  # type: ignore[attr-defined]
    parent = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(
        19, parent + constraint_check.CHILD_NICENESS
    )
    assert parent < 19  # else nothing here could be lower: the check above would prove nothing


@pytest.mark.parametrize(
    ("kind", "argument", "text"),
    [
        ("grammar", AMBIGUOUS, SLOW_TEXT),
        ("json_schema", canonical_json(BACKTRACKING_SCHEMA), '"' + "a" * 60 + 'cX"'),
    ],
)
def test_a_check_past_the_limit_is_abandoned_and_the_next_check_works(
    kind: Literal["grammar", "json_schema"], argument: str, text: str
) -> None:
    accepts("grammar", 'start: "yes"', "yes")  # the child is up: the limit times the check alone
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=rf"the {kind} check took longer than 0\.5 s"):
        accepts(kind, argument, text, timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert accepts("grammar", AMBIGUOUS, "aaa") == (True, "")  # a new child


def test_sampling_stops_as_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constraint_check, "CHECK_TIMEOUT_S", 1.0)
    params = GenerationParams(max_tokens=8, seed=0, logprobs=None, model="tiny-llama")
    with pytest.raises(ConstraintUncheckable) as caught:
        sample_record(
            Sender(Answer(SLOW_TEXT)),
            3,
            record(prompt="Hi", constraint={"grammar": AMBIGUOUS}),
            params,
        )
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(
        "sample 3 (p, completion): the grammar constraint did not finish checking a "
        "400-character output"
    )


def test_a_schema_that_cannot_be_checked_is_bad_input() -> None:
    # a schema whose check fails in jsonschema used to end sampling as an internal error
    params = GenerationParams(max_tokens=8, seed=0, logprobs=None, model="tiny-llama")
    recursive = {"json_schema": '{"$ref":"#"}'}
    with pytest.raises(ConstraintUncheckable) as caught:
        sample_record(Sender(Answer("{}")), 0, record(prompt="Hi", constraint=recursive), params)
    assert caught.value.exit_code == 2
    assert "the json_schema constraint cannot be checked: RecursionError" in caught.value.message


def test_the_gateway_records_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constraint_check, "CHECK_TIMEOUT_S", 1.0)
    constrained = request({"grammar": AMBIGUOUS})
    assert check_output(constrained, SLOW_TEXT, "stop", None) == "not_checked"
    assert check_output(constrained, "aaaa", "stop", None) == "satisfied"
    schema = request({"json_schema": BACKTRACKING_SCHEMA})
    assert check_output(schema, '"' + "a" * 60 + 'cX"', "stop", None) == "not_checked"
    assert check_output(schema, '"aac"', "stop", None) == "satisfied"


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    inner = schema
    for _ in range(depth - 1):
        inner["items"] = {}
        inner = inner["items"]
    return schema


def _text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, separators=(",", ":"))


def test_a_schema_deeper_than_the_limit_is_refused_when_read() -> None:
    # 200 levels ran jsonschema out of stack: an internal error (exit 3) on a bundle line
    assert json_shape(_nested(MAX_SCHEMA_DEPTH))[1] == MAX_SCHEMA_DEPTH
    Constraint.model_validate({"json_schema": _text(_nested(MAX_SCHEMA_DEPTH))})
    with pytest.raises(ValidationError, match=f"nests deeper than {MAX_SCHEMA_DEPTH} levels"):
        Constraint.model_validate({"json_schema": _text(_nested(500))})


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": _nested(500)},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"structured_outputs": {"json": _nested(500)}}, "structured_outputs.json"),
    ],
)
def test_the_gateway_refuses_a_deep_schema_naming_the_field(
    extra: dict[str, Any], field: str
) -> None:
    policy = Policy(
        served_model_name="tiny-llama",
        seed=0,
        default_max_tokens=8,
        max_model_len=512,
        structured_outputs_pinned=True,
    )
    with pytest.raises(Refused) as refused:
        admit_json("completion", {"model": "tiny-llama", "prompt": "p"} | extra, policy)
    assert (refused.value.status, refused.value.param) == (400, field)
    assert f"nests deeper than {MAX_SCHEMA_DEPTH} levels" in refused.value.message


def test_a_body_nested_past_the_parser_is_a_400() -> None:
    with pytest.raises(Refused) as refused:
        parse_body(b"[" * 200_000 + b"]" * 200_000)
    assert refused.value.status == 400
    assert "nests too deeply" in refused.value.message
