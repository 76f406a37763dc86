"""Admission decides everything before the engine, and refuses what it would change.

Nothing a client sends is dropped or rewritten (refused by name instead); the body is
``application/json`` in strict UTF-8; a constraint that cannot be recorded, compiled or checked
is a 400 before anything is sent, and nothing it names is fetched; a hostile compile or check
never stops ``/health`` or another client. (What is sent is recorded byte for byte:
``test_gateway_sent_bytes.py``.)
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from referencing.exceptions import Unresolvable

import detserve.constraint_check as constraint_check

from .gateway_rig import JSON, GatewayRig, StreamingFakeVllm, post_raw

MODEL = "tiny-llama"


def post(rig: GatewayRig, body: dict[str, Any], path: str = "/v1/completions") -> httpx.Response:
    return post_raw(rig, json.dumps({"model": MODEL, "max_tokens": 4} | body).encode(), path)


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


@pytest.mark.parametrize("spelling", ["1e-400", "-1e-400", "0." + "0" * 400 + "1", "5e-324"])
def test_a_temperature_a_double_would_round_to_zero_is_refused(
    rig: GatewayRig, spelling: str
) -> None:
    # not zero as written: answering it greedily would change what was asked
    body = '{"model":"tiny-llama","prompt":"p","max_tokens":2,"temperature":' + spelling + "}"
    response = post_raw(rig, body.encode())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "temperature"
    assert rig.fake.requests == []
    for zero in ("0", "-0", "0.0", "-0.0e5", "0E-400"):
        admitted = body.replace(spelling, zero).encode()
        assert post_raw(rig, admitted).status_code == 200, zero


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
    ("body", "param"),
    [
        (b'{"model":"tiny-llama","prompt":"p","\\ud800":1}', "\\ud800"),
        (b'{"model":"tiny-llama","prompt":"p","response_format":{"type":"text","\\udfff":1}}',
         "response_format.\\udfff"),
        (b'{"model":"tiny-llama","prompt":"p","structured_outputs":{"\\ud800x":1}}',
         "structured_outputs.\\ud800x"),
    ],
)  # fmt: skip
def test_a_refusal_naming_a_lone_surrogate_is_a_400_and_health_stays_ok(
    rig: GatewayRig, body: bytes, param: str
) -> None:
    # the refusal names the client's key: written escaped, never a 500 that doubts the gateway
    response = post_raw(rig, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert param in response.json()["error"]["message"]
    assert httpx.get(f"{rig.url}/health", timeout=10).status_code == 200
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


@pytest.mark.parametrize("hostile", ["compile", "check", "streamed check"])
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
    body |= {"stream": hostile == "streamed check"}  # a check holds no engine slot either way
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
    elif hostile == "check":
        assert outcome["hostile"].json()["detserve"]["constraint_check"] == "not_checked"
    else:
        events = [line for line in outcome["hostile"].text.splitlines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][5:])["detserve"]["constraint_check"] == "not_checked"


def test_a_body_is_read_and_admitted_off_the_event_loop(
    rig: GatewayRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a body with every number's spelling kept, and counting a schema, take a good part
    of a second for 2 MiB: admission that blocks never stops /health or another client."""
    import detserve.gateway.admission as admission

    entered, release = threading.Event(), threading.Event()
    real_admit = admission.admit

    def slow_admit(kind: str, body: object, policy: admission.Policy) -> admission.Admitted:
        if isinstance(body, dict) and body.get("prompt") == "slow":
            entered.set()
            assert release.wait(30)
        return real_admit(kind, body, policy)

    monkeypatch.setattr(admission, "admit", slow_admit)
    outcome: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: outcome.update(slow=post(rig, {"prompt": "slow"})))
    slow.start()
    try:
        assert entered.wait(30)
        health = httpx.get(f"{rig.url}/health", timeout=5)
        other = post(rig, {"prompt": "another client", "max_tokens": 2})
    finally:
        release.set()
        slow.join(60)
    assert (health.status_code, other.status_code) == (200, 200)
    assert outcome["slow"].status_code == 200
