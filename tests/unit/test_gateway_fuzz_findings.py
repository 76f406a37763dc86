"""What fuzzing the gateway against its OpenAPI document found, each fixed at its class and held
here by a test that fails without the fix (``test_gateway_fuzz.py`` runs the fuzzer itself;
the document's own drift is held in ``test_gateway_openapi.py``).

* With an API key, a request without it to a known route with another method got 405, and to an
  unknown route 404: routing answered before the key was asked for. The key is now checked
  before routing (:class:`~detserve.gateway.guards.KeyGuard`): 401 for all but ``/health``.
* ``/health``'s 503 was the health document alone, the one 5xx not in OpenAI's error shape; it
  now holds an ``error`` in that shape beside the health fields.
* ``response_format: null`` beside ``structured_outputs`` was admitted, the null dropped (as
  ``max_tokens: null`` beside ``max_completion_tokens`` had been): both present is refused by
  name, whatever they hold.
* A ``stop`` list longer than 16, or a stop string over 256 characters, was documented valid and
  refused by the canonical record in pydantic's words; the document now takes ``stop``,
  ``prompt`` and ``messages`` from the record's own schema (``test_gateway_openapi.py``).
* On the real engine (``tests/integration/test_gateway_fuzz_real.py``), a ``stop`` list of 5 was
  documented valid and the engine refused it (vLLM's ``VLLM_MAX_STOP_STRINGS``, 4): the record's
  cap is now the engine's, so the gateway refuses it by name and the document says 4.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway_fuzzing import assert_error_shape

from .committed import TinyWorkspace
from .gateway_rig import Fixture, GatewayRig, StreamingFakeVllm, running_gateway

MODEL = "tiny-llama"
KEY = "findings-key-0123456789"


@pytest.fixture
def keyed(
    tiny_workspace: TinyWorkspace, tmp_path: Path, fake: StreamingFakeVllm
) -> Iterator[GatewayRig]:
    fixture = Fixture(
        workspace=tiny_workspace, transcripts=tmp_path / "transcripts", options={"api_key": KEY}
    )
    yield from running_gateway(fixture, fake)


@pytest.mark.parametrize(
    ("method", "path", "with_key"),
    [
        ("TRACE", "/v1/models", 405),
        ("POST", "/metrics", 405),
        ("DELETE", "/v1/completions", 405),
        ("PATCH", "/openapi.json", 405),
        ("GET", "/v1/nothing", 404),
        ("GET", "/v1/models/", 404),
        ("GET", "/v1/provenance/a/b", 404),
    ],
)
def test_without_the_key_every_route_but_health_is_401_before_routing(
    keyed: GatewayRig, method: str, path: str, with_key: int
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        refused = httpx.request(method, f"{keyed.url}{path}", headers=headers, timeout=10)
        assert refused.status_code == 401, (headers, refused.text)
        assert_error_shape(401, refused.json())
        assert refused.json()["error"]["code"] == "invalid_api_key"
    known = httpx.request(
        method, f"{keyed.url}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert known.status_code == with_key
    assert_error_shape(with_key, known.json())


def test_health_needs_no_key_and_two_authorization_headers_are_refused(keyed: GatewayRig) -> None:
    assert httpx.get(f"{keyed.url}/health", timeout=10).status_code == 200
    assert httpx.request("TRACE", f"{keyed.url}/health", timeout=10).status_code == 405
    twice = httpx.get(
        f"{keyed.url}/v1/models",
        headers=[("Authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {KEY}")],
        timeout=10,
    )
    assert twice.status_code == 401


def test_an_unhealthy_gateway_s_503_is_in_openai_s_error_shape(rig: GatewayRig) -> None:
    rig.gateway.monitor.doubt("a test doubts it")
    health = httpx.get(f"{rig.url}/health", timeout=10)
    assert health.status_code == 503
    document = health.json()
    assert document["status"] == "unavailable"
    assert document["reason"] == "a test doubts it"
    assert_error_shape(503, {"error": document["error"]})
    assert "a test doubts it" in document["error"]["message"]
    refused = httpx.post(
        f"{rig.url}/v1/completions", json={"model": MODEL, "prompt": "p"}, timeout=10
    )
    assert refused.status_code == 503
    assert_error_shape(503, refused.json())


def test_a_null_constraint_field_beside_the_other_is_refused(
    rig: GatewayRig, fake: StreamingFakeVllm
) -> None:
    for nulled, given in (
        ("response_format", {"structured_outputs": {"regex": "a+"}}),
        ("structured_outputs", {"response_format": {"type": "json_object"}}),
    ):
        body = {"model": MODEL, "prompt": "p", "max_tokens": 2, nulled: None, **given}
        refused = httpx.post(f"{rig.url}/v1/completions", json=body, timeout=10)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "structured_outputs"
        assert "a null is not left out" in refused.json()["error"]["message"]
    alone = {"model": MODEL, "prompt": "p", "max_tokens": 2, "response_format": None}
    assert httpx.post(f"{rig.url}/v1/completions", json=alone, timeout=10).status_code == 200
    assert len(fake.requests) == 1


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_more_stop_strings_than_the_engine_takes_are_refused_before_it(
    rig: GatewayRig, fake: StreamingFakeVllm, path: str
) -> None:
    asked = (
        {"prompt": "p"}
        if path == "/v1/completions"
        else {"messages": [{"role": "user", "content": "p"}]}
    )
    body = {"model": MODEL, "max_tokens": 2, **asked}
    refused = httpx.post(f"{rig.url}{path}", json=body | {"stop": list("abcde")}, timeout=10)
    assert refused.status_code == 400, refused.text
    assert_error_shape(400, refused.json())
    assert refused.json()["error"]["param"] == "stop"
    assert fake.requests == []
    taken = httpx.post(f"{rig.url}{path}", json=body | {"stop": list("abcd")}, timeout=10)
    assert taken.status_code == 200, taken.text
    document = httpx.get(f"{rig.url}/openapi.json", timeout=10).json()
    assert '"maxItems": 4' in json.dumps(document)
