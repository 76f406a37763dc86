"""The gateway checks each constrained output after the engine answered: a satisfied, cut or
unchecked output is given with its check in its provenance; a violation is recorded and
withheld (502 naming the constraint, or an error event in a stream), and the transcript says
what the engine did. A faithful replay reproduces every check."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import detserve.constraint_check as constraint_check
from detserve import spelled_json
from detserve.canonical import canonical_bytes
from detserve.errors import RunLogError
from detserve.evaluation import Verdict
from detserve.gateway.admission import Admitted, Policy, Refused, admit, parse_body
from detserve.gateway.output_check import check_output
from detserve.gateway.replay import plan_transcript_replay, replay_transcript
from detserve.profile import load_profile
from detserve.runlog.models import ExchangeRequest
from detserve.runlog.transcript import TranscriptWriter, read_exchanges, validate_transcript
from detserve.runtime.container_spec import build_container_spec

from .committed import TinyWorkspace
from .containers import faithful_container, pinned_image
from .fake_http import serving
from .gateway_rig import (
    GatewayRig,
    StreamingFakeVllm,
    gateway_profile,
)
from .test_sampling_faults import FakeEngine
from .test_transcript import HEADER, exchange

MODEL = "tiny-llama"
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
GBNF = 'root ::= "yes" | "no"'
#: vLLM's name for each constraint kind in structured_outputs
VLLM_NAME = {"json_schema": "json", "json_object": "json_object"}


def request(constraint: dict[str, Any] | None) -> ExchangeRequest:
    """A recorded completion whose constraint (``{kind: argument}``) was sent as vLLM's
    ``structured_outputs``."""
    sent = None
    if constraint is not None:
        ((kind, argument),) = constraint.items()
        sent = spelled_json.dumps({VLLM_NAME.get(kind, kind): argument})
    return ExchangeRequest.model_validate_json(
        json.dumps(
            {
                "kind": "completion",
                "max_tokens": 8,
                "messages": None,
                "prompt": "p",
                "response_format": None,
                "stop": None,
                "structured_outputs": sent,
            }
        )
    )


def admit_json(kind: str, body: dict[str, Any], policy: Policy) -> Admitted:
    """Admit a body as the gateway reads it from the wire."""
    return admit(kind, parse_body(json.dumps(body).encode()), policy)


@pytest.mark.parametrize(
    ("constraint", "text", "expected"),
    [
        ({"json_schema": SCHEMA}, '{"a": 1}', "satisfied"),
        ({"json_schema": SCHEMA}, '{"a": "1"}', "violated"),
        ({"json_schema": SCHEMA}, '{"a": NaN}', "violated"),
        ({"json_object": True}, '{"b": [1]}', "satisfied"),
        ({"json_object": True}, "[1]", "violated"),
        ({"choice": ["yes", "no"]}, "no", "satisfied"),
        ({"choice": ["yes", "no"]}, "no ", "violated"),
        ({"regex": "[0-9]+"}, "123", "satisfied"),
        ({"regex": "[0-9]+"}, "123a", "violated"),  # a full match, not a search
        ({"grammar": 'start: "yes" | "no"'}, "yes", "satisfied"),
        ({"grammar": 'start: "yes" | "no"'}, "maybe", "violated"),
        ({"json_schema": {"$ref": "#"}}, "{}", "not_checked"),  # recurses in jsonschema
    ],
)
def test_each_constraint_is_checked_by_its_library(
    constraint: dict[str, Any], text: str, expected: str
) -> None:
    assert check_output(request(constraint), text, "stop", None) == expected


def test_a_regex_whose_match_runs_out_of_time_is_not_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a client's pattern that backtracks for ever must not stall the gateway
    monkeypatch.setattr(constraint_check, "REGEX_CHECK_TIMEOUT_S", 0.2)
    constrained = request({"regex": "(a|aa)*c"})
    assert check_output(constrained, "a" * 60 + "cX", "stop", None) == "not_checked"
    assert check_output(constrained, "aac", "stop", None) == "satisfied"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"structured_outputs": {"regex": "[0-9]+"}}, "structured_outputs"),
    ],
)
def test_a_constraint_is_refused_when_the_profile_pins_no_backend(
    body: dict[str, Any], field: str
) -> None:
    # vLLM's `auto` would pick a backend per request: not a pin, as for a bundle
    policy = Policy(
        served_model_name=MODEL,
        seed=0,
        default_max_tokens=8,
        max_model_len=512,
        structured_outputs_pinned=False,
    )
    with pytest.raises(Refused) as refused:
        admit_json("completion", {"model": MODEL, "prompt": "p"} | body, policy)
    assert refused.value.param == field
    assert "pins no structured-outputs backend" in refused.value.message
    pinned = replace(policy, structured_outputs_pinned=True)
    assert admit_json("completion", {"model": MODEL, "prompt": "p"} | body, pinned).constraint
    assert admit_json("completion", {"model": MODEL, "prompt": "p"}, policy).constraint is None
    text = {"response_format": {"type": "text"}}  # no constraint: forwarded and recorded
    admitted = admit_json("completion", {"model": MODEL, "prompt": "p"} | text, policy)
    assert admitted.request.response_format == '{"type":"text"}'
    assert b'"response_format":{"type":"text"}' in admitted.body


def test_a_cut_output_is_not_a_violation() -> None:
    constrained = request({"json_schema": SCHEMA})
    assert check_output(constrained, '{"a": 1}', "stop", None) == "satisfied"
    assert check_output(constrained, '{"a": ', "stop", None) == "violated"
    assert check_output(constrained, '{"a": ', "length", None) == "cut"
    assert check_output(constrained, '{"a": ', None, "client_disconnected") == "cut"
    assert check_output(request(None), "anything", "stop", None) is None


def post(rig: GatewayRig, body: dict[str, Any], path: str = "/v1/completions") -> httpx.Response:
    return httpx.post(f"{rig.url}{path}", json={"model": MODEL, "max_tokens": 8} | body, timeout=30)


def test_a_satisfied_output_is_given_with_its_check(
    rig: GatewayRig, fake: StreamingFakeVllm
) -> None:
    fake.pieces = ['{"a"', ": ", "1}"]
    answer = rig.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "JSON please"}],
        max_tokens=8,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
    )
    assert answer.choices[0].message.content == '{"a": 1}'
    provenance = answer.model_extra["detserve"]
    assert provenance["constraint"] == "json_schema"
    assert provenance["constraint_check"] == "satisfied"
    rig.stop()
    (segment,) = rig.transcripts.iterdir()
    (exchange,) = read_exchanges(segment)
    assert exchange.constraint_check == "satisfied"


def test_a_json_object_response_format_is_admitted_and_checked(
    rig: GatewayRig, fake: StreamingFakeVllm
) -> None:
    fake.pieces = ['{"b"', ": 2}"]
    response = post(rig, {"prompt": "Hi", "response_format": {"type": "json_object"}})
    assert response.status_code == 200, response.text
    assert response.headers["X-Detserve-Constraint-Check"] == "satisfied"
    ((_, sent),) = fake.requests
    assert sent["response_format"] == {"type": "json_object"}  # as the client sent it


def test_a_violation_is_recorded_and_withheld(rig: GatewayRig, fake: StreamingFakeVllm) -> None:
    fake.pieces = ["mayb", "e"]  # the engine did not enforce the choice, and stopped by itself
    response = post(rig, {"prompt": "Hi", "structured_outputs": {"choice": ["yes", "no"]}})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "constraint_violated"
    assert "violates the request's choice constraint" in error["message"]
    assert "maybe" not in response.text  # the output is withheld
    exchange_id = response.headers["X-Detserve-Id"]
    provenance = httpx.get(f"{rig.url}/v1/provenance/{exchange_id}").json()
    assert provenance["constraint_check"] == "violated"
    assert httpx.get(f"{rig.url}/health").status_code == 200  # one bad output is not a fault
    rig.stop()
    (segment,) = rig.transcripts.iterdir()
    (exchange,) = read_exchanges(segment)
    assert (exchange.id, exchange.text, exchange.constraint_check) == (
        exchange_id,
        "maybe",
        "violated",
    )


def test_a_streamed_violation_sends_no_output(rig: GatewayRig, fake: StreamingFakeVllm) -> None:
    fake.pieces = ["12", "3", "x"]
    stream = rig.client().completions.create(
        model=MODEL,
        prompt="Digits",
        max_tokens=8,
        stream=True,
        extra_body={"structured_outputs": {"regex": "[0-9]+"}},
    )
    received: list[str] = []
    with pytest.raises(openai.APIError, match="violates the request's regex constraint"):
        received.extend(chunk.choices[0].text for chunk in stream)
    assert received == []  # the chunks waited for the check
    rig.stop()
    (segment,) = rig.transcripts.iterdir()
    (exchange,) = read_exchanges(segment)
    assert exchange.constraint_check == "violated"
    assert exchange.text == "123x"


def test_a_streamed_satisfied_output_arrives_whole(
    rig: GatewayRig, fake: StreamingFakeVllm
) -> None:
    fake.pieces = ["12", "3"]
    chunks = list(
        rig.client().completions.create(
            model=MODEL,
            prompt="Digits",
            max_tokens=8,
            stream=True,
            extra_body={"structured_outputs": {"regex": "[0-9]+"}},
        )
    )
    assert "".join(chunk.choices[0].text for chunk in chunks) == "123"
    assert chunks[-1].model_extra["detserve"]["constraint_check"] == "satisfied"


@pytest.mark.parametrize(
    ("pieces", "constraint", "check"),
    [
        (['{"a"', ": "], {"json": SCHEMA}, "cut"),  # cut by max_tokens 2
        # a pattern that backtracks for ever on the output: the check runs out of time
        (
            ['"', "a" * 60, 'cX"'],
            {"json": {"type": "string", "pattern": "^(a|aa)*c$"}},
            "not_checked",
        ),
    ],
)
def test_a_cut_or_unchecked_output_is_given_and_says_so(
    rig: GatewayRig,
    fake: StreamingFakeVllm,
    monkeypatch: pytest.MonkeyPatch,
    pieces: list[str],
    constraint: dict[str, Any],
    check: str,
) -> None:
    fake.pieces = [*pieces, "}"] if check == "cut" else pieces
    constraint_check.compile_problem("regex", "a")  # the child is up: the limit times the check
    monkeypatch.setattr(constraint_check, "CHECK_TIMEOUT_S", 1.0)
    body = {"prompt": "Hi", "max_tokens": len(pieces), "structured_outputs": constraint}
    response = post(rig, body)
    assert response.status_code == 200, response.text
    assert response.json()["detserve"]["constraint_check"] == check


def test_a_faithful_replay_reproduces_every_check(
    rig: GatewayRig, fake: StreamingFakeVllm, tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    fake.pieces = ["12", "3", "x"]
    asked = [
        {"prompt": "one", "structured_outputs": {"regex": "[0-9]+x"}},  # satisfied
        {"prompt": "two", "structured_outputs": {"regex": "[0-9]+"}},  # violated
        {"prompt": "three", "max_tokens": 2, "structured_outputs": {"regex": "[0-9]+x"}},  # cut
        # not checked: the schema's check recurses for ever (on "123")
        {"prompt": "four", "max_tokens": 2, "structured_outputs": {"json": {"$ref": "#"}}},
        {"prompt": "five"},
    ]
    assert [post(rig, body).status_code for body in asked] == [200, 502, 200, 200, 200]
    rig.stop()
    (claim,) = rig.transcripts.iterdir()
    checks = [exchange.constraint_check for exchange in read_exchanges(claim)]
    assert checks == ["satisfied", "violated", "cut", "not_checked", None]
    replayed = StreamingFakeVllm(pieces=["12", "3", "x"])
    with serving(replayed.answer) as port:
        loaded = load_profile(gateway_profile(tiny_workspace, port))
        spec = build_container_spec(loaded)
        engine = FakeEngine(faithful_container(spec), pinned_image(spec))
        out = tmp_path / "replay.transcript.jsonl"
        report = replay_transcript(
            plan_transcript_replay(claim, loaded), loaded, out, engine=engine
        )
    assert report.verdict is Verdict.IDENTICAL, report.summary_lines()
    assert out.read_bytes() == claim.read_bytes()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"constraint_check": None}, "exactly when its request has a constraint"),
        ({"constraint_check": "cut", "finish_reason": "stop"}, "an output is cut exactly"),
        ({"constraint_check": "violated", "finish_reason": "length"}, "an output is cut exactly"),
    ],
)
def test_a_check_that_contradicts_the_line_is_refused(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = tmp_path / "t.transcript.jsonl"
    writer = TranscriptWriter(path, HEADER)
    constrained = exchange(0, constraint_check="satisfied")
    constrained["request"] = constrained["request"] | {"structured_outputs": '{"regex":"a+"}'}
    writer.append(constrained)
    writer.close("stopped")
    lines = path.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[1]) | changes
    path.write_bytes(lines[0] + canonical_bytes(record) + b"".join(lines[2:]))
    with pytest.raises(RunLogError, match=message):
        validate_transcript(path)
