"""What is sent is what is recorded: a gateway request's constraint, byte for byte.

A constraint reaches the engine as the client wrote it (key order, which decides the order the
engine writes a schema's fields in, and number spellings) and the transcript holds that text, so
a replay sends the same bytes and reads IDENTICAL, and two requests that send different bytes
never share a request hash (a property, tested with hypothesis).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detserve.evaluation import Verdict
from detserve.gateway.admission import Admitted, Policy, Refused, admit, parse_body
from detserve.gateway.replay import plan_transcript_replay, replay_transcript
from detserve.profile import load_profile
from detserve.runlog.transcript import read_exchanges, request_sha256
from detserve.runtime.container_spec import build_container_spec

from .committed import TinyWorkspace
from .containers import faithful_container, pinned_image
from .fake_http import serving
from .gateway_rig import JSON, GatewayRig, StreamingFakeVllm, gateway_profile, post_raw
from .test_sampling_faults import FakeEngine

MODEL = "tiny-llama"
POLICY = Policy(
    served_model_name=MODEL,
    seed=0,
    default_max_tokens=8,
    max_model_len=512,
    structured_outputs_pinned=True,
)
#: properties out of alphabetical order, numbers spelled three ways
SCHEMA_TEXT = (
    '{"type":"object","properties":{"zeta":{"type":"number","minimum":1.0},'
    '"alpha":{"enum":[1e2,100,-0]}},"required":["zeta","alpha"]}'
)


def response_format(schema_text: str, *, extra: str = "") -> str:
    return (
        '{"type":"json_schema","json_schema":{"name":"answer"' + extra + ',"schema":'
        + schema_text + "}}"
    )  # fmt: skip


def replay(claim: Path, workspace: TinyWorkspace, fake: StreamingFakeVllm, out: Path) -> Any:
    with serving(fake.answer, fake.bodies) as port:
        loaded = load_profile(gateway_profile(workspace, port))
        spec = build_container_spec(loaded)
        engine = FakeEngine(faithful_container(spec), pinned_image(spec))
        return replay_transcript(plan_transcript_replay(claim, loaded), loaded, out, engine=engine)


# --- what is sent is what is recorded ---------------------------------------------------------


def test_a_schema_out_of_alphabetical_order_is_sent_recorded_and_replayed_as_written(
    rig: GatewayRig, fake: StreamingFakeVllm, tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    fake.pieces = ['{"zeta"', ":2,", '"alpha":100}']
    sent_format = response_format(SCHEMA_TEXT, extra=',"strict":true')
    body = (
        '{"model":"tiny-llama","max_tokens":4,"messages":[{"role":"user","content":"Hi"}],'
        f'"response_format": {sent_format}}}'
    ).encode()
    answered = post_raw(rig, body, "/v1/chat/completions")
    assert answered.status_code == 200, answered.text
    streamed = body.replace(b'"max_tokens":4', b'"max_tokens":4,"stream":true')
    with httpx.stream(
        "POST", f"{rig.url}/v1/chat/completions", content=streamed, headers=JSON, timeout=60
    ) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]"
    # the engine got the client's text, keys in order, numbers as spelled
    assert all(f'"response_format":{sent_format}'.encode() in sent for sent in fake.bodies)
    rig.stop()
    (claim,) = rig.transcripts.iterdir()
    exchanges = read_exchanges(claim)
    assert [e.request.response_format for e in exchanges] == [sent_format, sent_format]
    assert answered.headers["X-Detserve-Request-Sha256"] == request_sha256(exchanges[0].request)

    replayed = StreamingFakeVllm(pieces=fake.pieces)
    report = replay(claim, tiny_workspace, replayed, tmp_path / "replay.transcript.jsonl")
    assert report.verdict is Verdict.IDENTICAL, report.summary_lines()
    # byte for byte what was sent; a streamed exchange's body differs in `stream` alone
    assert replayed.bodies[0] == fake.bodies[0]
    assert replayed.bodies[1] == fake.bodies[1].replace(b'"stream":true', b'"stream":false')


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ('{"properties":{"a":{},"b":{}}}', '{"properties":{"b":{},"a":{}}}'),
        ('{"minimum":1.0}', '{"minimum":1}'),
        ('{"maximum":1e2}', '{"maximum":100}'),
        ('{"maximum":9007199254740993}', '{"maximum":9007199254740992}'),  # above 2**53
    ],
)
def test_requests_that_send_different_bytes_never_share_a_hash(
    rig: GatewayRig, fake: StreamingFakeVllm, first: str, second: str
) -> None:
    fake.pieces = ["1"]
    hashes = []
    for schema in (first, second):
        body = f'{{"model":"tiny-llama","prompt":"p","structured_outputs":{{"json":{schema}}}}}'
        response = post_raw(rig, body.encode())
        assert response.status_code == 200, response.text
        hashes.append(response.headers["X-Detserve-Request-Sha256"])
    assert hashes[0] != hashes[1]
    assert fake.bodies[0] != fake.bodies[1]


def _spelled(tree: Any) -> str:
    kind, value = tree
    if kind == "object":
        members = (f"{json.dumps(k, ensure_ascii=False)}:{_spelled(v)}" for k, v in value)
        return "{" + ",".join(members) + "}"
    if kind == "array":
        return "[" + ",".join(_spelled(item) for item in value) + "]"
    return str(value)  # a number as spelled, a string as JSON, a literal


_numbers = st.from_regex(r"-?(0|[1-9][0-9]{0,4})(\.[0-9]{1,2})?([eE][+-]?[0-9])?", fullmatch=True)
_scalars = st.one_of(
    _numbers.map(lambda n: ("number", n)),
    st.text(max_size=3).map(lambda s: ("string", json.dumps(s, ensure_ascii=False))),
    st.sampled_from(["true", "false", "null"]).map(lambda s: ("literal", s)),
)
_trees = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda items: ("array", items)),
        st.dictionaries(st.text(max_size=3), children, max_size=4).map(
            lambda d: ("object", list(d.items()))
        ),
    ),
    max_leaves=12,
)


def _respellings(number: str) -> list[str]:
    """Other spellings of the same number (``1``: ``1.0``, ``1e0``; ``1.5``: ``1.50``)."""
    if not any(mark in number for mark in ".eE"):
        return [number, number + ".0", number + "e0"]
    if "e" not in number.lower():
        return [number, number + "0"]
    return [number]


@st.composite
def _variant(draw: st.DrawFn, tree: Any) -> Any:
    """The same tree, or one with an object's keys reordered or a number respelled."""
    kind, value = tree
    if kind == "object" and len(value) > 1 and draw(st.booleans()):
        return ("object", draw(st.permutations(value)))
    if kind == "number" and draw(st.booleans()):
        return ("number", draw(st.sampled_from(_respellings(value))))
    if kind in ("object", "array"):
        items = value if kind == "array" else [v for _, v in value]
        changed = [draw(_variant(item)) for item in items]
        keys = [k for k, _ in value]
        return (kind, changed if kind == "array" else list(zip(keys, changed, strict=True)))
    return tree


@st.composite
def _schema_pairs(draw: st.DrawFn) -> tuple[str, str]:
    tree = draw(_trees)
    other = draw(st.one_of(st.just(tree), _variant(tree), _trees))
    return (
        '{"type":"object","default":' + _spelled(tree) + "}",
        '{"type":"object","default":' + _spelled(other) + "}",
    )


def _admitted(schema_text: str) -> Admitted:
    body = f'{{"model":"tiny-llama","prompt":"p","structured_outputs":{{"json":{schema_text}}}}}'
    return admit("completion", parse_body(body.encode()), POLICY)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_schema_pairs())
def test_the_request_hash_is_the_same_exactly_when_the_bytes_sent_are(
    pair: tuple[str, str],
) -> None:
    a, b = (_admitted(text) for text in pair)
    assert a.request.structured_outputs == '{"json":' + pair[0] + "}"  # recorded as sent
    assert (a.request_sha256 == b.request_sha256) == (a.body == b.body) == (pair[0] == pair[1])
    assert a.request_sha256 == request_sha256(a.request)


def test_the_request_hash_names_the_recorded_request() -> None:
    admitted = _admitted(SCHEMA_TEXT)
    line = json.dumps(admitted.request.model_dump(), sort_keys=True, separators=(",", ":"))
    assert admitted.request_sha256 == hashlib.sha256(line.encode()).hexdigest()
    with pytest.raises(Refused) as refused:
        _admitted('{"type":"object","default":1e400}')  # beyond a double: no value to send
    assert refused.value.param is None
