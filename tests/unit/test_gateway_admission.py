"""Admission decides everything before the engine, and what is sent is what is recorded.

A constraint reaches the engine as the client wrote it (key order, number spellings) and the
transcript holds that text, so a replay sends the same bytes and two requests that send
different bytes never share a hash; nothing a client sends is dropped or rewritten (refused by
name instead); the body is ``application/json`` in strict UTF-8; a constraint that cannot be
recorded, compiled or checked is a 400 before anything is sent, and nothing it names is fetched;
a hostile compile or check never stops ``/health`` or another client.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing.exceptions import Unresolvable

import detserve.constraint_check as constraint_check
from detserve.evaluation import Verdict
from detserve.gateway.admission import Admitted, Policy, Refused, admit, parse_body
from detserve.gateway.replay import plan_transcript_replay, replay_transcript
from detserve.profile import load_profile
from detserve.runlog.transcript import read_exchanges, request_sha256
from detserve.runtime.container_spec import build_container_spec

from .committed import TinyWorkspace
from .containers import faithful_container, pinned_image
from .fake_http import serving
from .gateway_rig import Fixture, GatewayRig, StreamingFakeVllm, gateway_profile, running_gateway
from .test_sampling_faults import FakeEngine

MODEL = "tiny-llama"
JSON = {"Content-Type": "application/json"}
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


@pytest.fixture
def fake() -> StreamingFakeVllm:
    return StreamingFakeVllm()


@pytest.fixture
def rig(
    tiny_workspace: TinyWorkspace, tmp_path: Path, fake: StreamingFakeVllm
) -> Iterator[GatewayRig]:
    fixture = Fixture(workspace=tiny_workspace, transcripts=tmp_path / "transcripts")
    yield from running_gateway(fixture, fake)


def post_raw(
    rig: GatewayRig, body: bytes, path: str = "/v1/completions", headers: Any = JSON
) -> httpx.Response:
    return httpx.post(f"{rig.url}{path}", content=body, headers=headers, timeout=60)


def post(rig: GatewayRig, body: dict[str, Any], path: str = "/v1/completions") -> httpx.Response:
    return post_raw(rig, json.dumps({"model": MODEL, "max_tokens": 4} | body).encode(), path)


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


# --- nothing dropped or rewritten: refused by name --------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 4, "max_completion_tokens": None}, "max_completion_tokens"),
        ({"max_tokens": None, "max_completion_tokens": 4}, "max_completion_tokens"),
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "a", "strict": False, "schema": {"type": "object"}}}},
         "response_format.json_schema.strict"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
         "response_format.json_schema.name"),
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "a", "schema": {}, "unknown": 1}}}, "response_format.json_schema.unknown"),
        ({"response_format": {"type": "json_object", "schema": {}}}, "response_format.schema"),
        ({"response_format": {"type": "structural_tag"}}, "response_format.type"),
        ({"structured_outputs": {"regex": "a+", "whitespace_pattern": " "}},
         "structured_outputs.whitespace_pattern"),
        ({"structured_outputs": {"regex": "a+", "json": None}}, "structured_outputs"),
        ({"structured_outputs": {"json": '{"type":"object"}'}}, "structured_outputs.json"),
        ({"user": "someone"}, "user"),
        ({"stop": []}, "stop"),
        ({"seed": 0.0}, "seed"),
        ({"n": 1.0}, "n"),
        ({"max_tokens": 4.0}, "max_tokens"),
    ],
)  # fmt: skip
def test_a_field_that_would_be_dropped_or_rewritten_is_refused_by_name(
    rig: GatewayRig, body: dict[str, Any], param: str
) -> None:
    path = "/v1/chat/completions"
    base = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    response = post_raw(rig, json.dumps(base | body).encode(), path)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert rig.fake.requests == []


def test_strict_false_is_refused_because_vllm_enforces_every_schema(rig: GatewayRig) -> None:
    # what was asked (a schema the output may leave) is not what vLLM does: said, not ignored
    for strict, status in ((False, 400), (True, 200)):
        spec = {"name": "a", "strict": strict, "schema": {"type": "object"}}
        body = {"prompt": "p", "response_format": {"type": "json_schema", "json_schema": spec}}
        response = post(rig, body)
        assert response.status_code == status, response.text
    assert "vLLM enforces every schema" in post(rig, body | {"response_format": {
        "type": "json_schema", "json_schema": spec | {"strict": False}}}).text  # fmt: skip
    assert len(rig.fake.requests) == 1  # only strict: true reached the engine


def test_the_pinned_values_in_another_spelling_are_admitted(rig: GatewayRig) -> None:
    # 0.0 is what Python clients send for temperature=0: the pinned value, sent as pinned
    body = b'{"model":"tiny-llama","prompt":"p","max_tokens":2,"temperature":0.0,"seed":0,"n":1}'
    assert post_raw(rig, body).status_code == 200


@pytest.mark.parametrize(
    "encoded",
    [
        b"\xef\xbb\xbf" + b'{"model":"tiny-llama","prompt":"p"}',
        '{"model":"tiny-llama","prompt":"p"}'.encode("utf-16"),
        '{"model":"tiny-llama","prompt":"p"}'.encode("utf-16-le"),
        '{"model":"tiny-llama","prompt":"p"}'.encode("utf-32"),
        b'{"model":"tiny-llama","prompt":"\xed\xa0\x80"}',  # a surrogate, encoded
        b'{"model":"tiny-llama","prompt":"\\ud800"}',  # a lone surrogate, escaped
    ],
)
def test_only_strict_utf8_is_read(rig: GatewayRig, encoded: bytes) -> None:
    response = post_raw(rig, encoded)
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert rig.fake.requests == []


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin-1",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ],
)
def test_a_body_not_sent_as_json_is_415(rig: GatewayRig, content_type: str | None) -> None:
    # a web page's simple POST (text/plain) must not be answered
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = post_raw(rig, b'{"model":"tiny-llama","prompt":"p"}', headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert rig.fake.requests == []


def test_json_with_its_utf8_charset_is_admitted(rig: GatewayRig) -> None:
    headers = {"Content-Type": 'Application/JSON; charset="UTF-8"'}
    body = b'{"model":"tiny-llama","prompt":"p","max_tokens":2}'
    assert post_raw(rig, body, headers=headers).status_code == 200


# --- decided before the engine ----------------------------------------------------------------


def test_a_streamed_schema_above_2_53_is_recorded_and_the_gateway_goes_on(
    rig: GatewayRig, fake: StreamingFakeVllm
) -> None:
    # it used to fail in the stream after the engine answered, its slot never released
    fake.pieces = ["9"]
    schema = '{"type":"integer","maximum":18446744073709551616}'
    body = '{"model":"tiny-llama","prompt":"p","stream":true,"structured_outputs":{"json":%s}}'
    body %= schema
    with httpx.stream(
        "POST", f"{rig.url}/v1/completions", content=body.encode(), headers=JSON, timeout=60
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][5:])["detserve"]["constraint_check"] == "satisfied"
    assert post(rig, {"prompt": "next"}).status_code == 200
    assert httpx.get(f"{rig.url}/health").status_code == 200


@pytest.mark.parametrize(
    ("constraint", "param", "message"),
    [
        ({"json": {"type": "object", "properties": {f"p{n}": {} for n in range(4100)}}},
         "structured_outputs.json", "MAX_SCHEMA_NODES"),
        ({"regex": "a" * 5000}, "structured_outputs.regex", "at most 4096"),
        ({"grammar": 'start: "a"' + " " * 20000}, "structured_outputs.grammar", "at most 16384"),
        ({"choice": [str(n) for n in range(1025)]}, "structured_outputs.choice", "MAX_CHOICES"),
        ({"json": {"const": "x" * 70000}}, "structured_outputs", "MAX_CONSTRAINT_CHARS"),
        ({"json": {"const": "\ud800"}}, "structured_outputs.json", "lone surrogate"),
        ({"grammar": 'root ::= "a"'}, "structured_outputs.grammar", "cannot be checked"),
        # Lark reads an imported grammar from a file (common: its own; .name: the working dir)
        ({"grammar": "%import common.WORD\nstart: WORD"}, "structured_outputs.grammar",
         "%import reads grammar files"),
        ({"regex": "(?P<x"}, "structured_outputs.regex", "cannot be checked"),
        ({"json": {"type": 12}}, "structured_outputs.json", "cannot be checked"),
        ({"json": {"$schema": "https://example.invalid/draft"}}, "structured_outputs.json",
         "no draft jsonschema knows"),
    ],
)  # fmt: skip
def test_a_constraint_that_cannot_be_recorded_or_checked_is_a_400_before_the_engine(
    rig: GatewayRig, constraint: dict[str, Any], param: str, message: str
) -> None:
    response = post(rig, {"prompt": "p", "structured_outputs": constraint})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert message in error["message"]
    assert rig.fake.requests == []


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local listener a schema names: it must never be connected to."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.3)
    yield server
    server.close()


def _connected(listener: socket.socket) -> bool:
    try:
        connection, _ = listener.accept()
    except TimeoutError:
        return False
    connection.close()
    return True


@pytest.mark.parametrize("where", ["root", "nested", "id-based"])
def test_a_remote_ref_is_refused_and_never_fetched(
    rig: GatewayRig, listener: socket.socket, where: str
) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/schema.json"
    schema: dict[str, Any] = {
        "root": {"$ref": url},
        "nested": {"type": "object", "properties": {"a": {"$ref": url + "#/x"}}},
        "id-based": {"$id": url, "$ref": "other.json"},  # relative to the $id: remote too
    }[where]
    response = post(rig, {"prompt": "p", "structured_outputs": {"json": schema}})
    assert response.status_code == 400, response.text
    assert "does not resolve inside the schema" in response.json()["error"]["message"]
    assert rig.fake.requests == []
    assert not _connected(listener)


def test_the_check_itself_never_fetches_a_reference(listener: socket.socket) -> None:
    # even a reference that admission did not see (a recorded schema, a replay) is not fetched
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/s.json"
    schema = json.dumps({"properties": {"a": {"$ref": url}}})
    verdict, reason = constraint_check.accepts("json_schema", schema, '{"a": 1}')
    assert verdict is None
    assert "does not resolve inside the schema" in reason
    assert not _connected(listener)


def test_the_checkers_registry_never_retrieves(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the second defence: a reference past the scan still resolves inside the schema or not at all
    monkeypatch.setattr(constraint_check, "_check_references", lambda schema: None)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/s.json"
    schema = json.dumps({"properties": {"a": {"$ref": url}}})
    validator = constraint_check.json_validator.__wrapped__(schema)  # in this process
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(2)  # a fetch, were one made, would not wait for ever
    try:
        with pytest.raises(Unresolvable):
            validator.validate({"a": 1})
    finally:
        socket.setdefaulttimeout(previous)
    assert not _connected(listener)


def test_internal_references_resolve(rig: GatewayRig, fake: StreamingFakeVllm) -> None:
    fake.pieces = ['{"a":', "1}"]
    schema = {
        "$defs": {"n": {"type": "integer"}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/n"}},
    }
    response = post(rig, {"prompt": "p", "structured_outputs": {"json": schema}})
    assert response.status_code == 200, response.text
    assert response.json()["detserve"]["constraint_check"] == "satisfied"


# --- nothing heavy on the event loop ----------------------------------------------------------

#: Lark expands each optional into alternatives: 30 of them never finish compiling
HOSTILE_GRAMMAR = "start: " + '"a"? ' * 30 + '"x"'
#: Python's re backtracks for ever on a run of "a" not followed by "c"
BACKTRACKING = {"type": "string", "pattern": "^(a|aa)*c$"}


@pytest.mark.parametrize("hostile", ["compile", "check"])
def test_health_and_other_clients_are_answered_while_a_hostile_constraint_runs(
    rig: GatewayRig, fake: StreamingFakeVllm, monkeypatch: pytest.MonkeyPatch, hostile: str
) -> None:
    constraint_check.compile_problem("regex", "a")  # the child is up: the limit times the work
    monkeypatch.setattr(constraint_check, "CHECK_TIMEOUT_S", 4.0)
    if hostile == "compile":
        constraint: dict[str, Any] = {"grammar": HOSTILE_GRAMMAR}
    else:
        constraint = {"json": BACKTRACKING}
        fake.pieces = ['"', "a" * 60, 'cX"']
    outcome: dict[str, httpx.Response] = {}
    body = {"prompt": "hostile", "max_tokens": 3, "structured_outputs": constraint}
    hostile_client = threading.Thread(target=lambda: outcome.update(hostile=post(rig, body)))
    hostile_client.start()
    try:
        # the child is at the hostile work: the compile, or the check once the engine answered
        while not (constraint_check._lock.locked() and (hostile == "compile" or fake.requests)):
            assert hostile_client.is_alive()
            threading.Event().wait(0.01)
        health = httpx.get(f"{rig.url}/health", timeout=60)
        other = post(rig, {"prompt": "another client", "max_tokens": 2})
        still_running = hostile_client.is_alive() and constraint_check._lock.locked()
    finally:
        hostile_client.join(60)
    assert (health.status_code, other.status_code) == (200, 200)
    assert still_running  # both were answered while the hostile work went on
    if hostile == "compile":
        assert outcome["hostile"].status_code == 400
        assert outcome["hostile"].json()["error"]["param"] == "structured_outputs.grammar"
        assert "took longer than 4 s" in outcome["hostile"].json()["error"]["message"]
    else:
        assert outcome["hostile"].json()["detserve"]["constraint_check"] == "not_checked"


def test_the_request_hash_names_the_recorded_request() -> None:
    admitted = _admitted(SCHEMA_TEXT)
    line = json.dumps(admitted.request.model_dump(), sort_keys=True, separators=(",", ":"))
    assert admitted.request_sha256 == hashlib.sha256(line.encode()).hexdigest()
    with pytest.raises(Refused) as refused:
        _admitted('{"type":"object","default":1e400}')  # beyond a double: no value to send
    assert refused.value.param is None
