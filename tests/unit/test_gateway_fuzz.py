"""Schemathesis fuzzes a live gateway (uvicorn, real sockets, the fake engine) against the
OpenAPI document it serves, with a fixed seed and a bounded budget.

Two gateways, one without an API key and one with (the bearer scheme its document names), each
serving the document :func:`gateway_fuzzing.document` builds (a test requires it): every
operation is fuzzed with the document's examples, Schemathesis' coverage phase (boundary values
and invalid shapes of every field, unexpected methods and media types) and its fuzzing phase
(positive and negative bodies), with every built-in response check but the stateful ones.
Each case is sent as generated, then with a foreign ``Origin`` and with a foreign ``Host`` (a web
page, DNS rebinding: 403), and to the keyed gateway with a wrong key (401). On every answer:

* no 5xx (``not_a_server_error``), and no error event in a stream: over a healthy gateway and a
  healthy fake none of the documented 5xx has a cause (500 an unexpected error; 502 the engine
  failed, or its output violated the constraint: the fake answers every admitted request with
  ``max_tokens`` tokens, so an unsatisfied output is ``cut``, never ``violated``; 503 unhealthy or
  too many connections), so any is a finding;
* no redirect; every 4xx in OpenAI's error shape, exactly (:mod:`gateway_fuzzing`);
* the status, the content type, the body (each event of a stream) and the headers as documented
  (Schemathesis' conformance checks);
* a body the document calls valid is admitted (but an integer spelled ``4.0``: the documented
  exception), one it calls invalid is refused (``negative_data_rejection``);
* afterwards each gateway is healthy (``/health`` 200), holds no place or slot in its queue, and
  answers an ordinary request, whole and streamed.

The budget: seed :data:`SEED`, :data:`MAX_EXAMPLES` examples per operation in the fuzzing phase
(the coverage phase adds its own, a few hundred per POST operation), :data:`DEADLINE` per
example; the whole file takes under a minute here (docs/gateway.md says what was measured).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Final

import httpx
import hypothesis
import pytest
import schemathesis

from gateway_fuzzing import (
    EXTRA_CHECKS,
    config,
    document,
    foreign_variants,
    wrong_key_variant,
)

from .committed import TINY_CONFIG
from .conftest import copy_tiny_workspace
from .gateway_rig import Fixture, GatewayRig, StreamingFakeVllm, running_gateway

MODEL: Final = "tiny-llama"
#: the run's seed: the same cases every time
SEED: Final = 22
#: examples per operation in the fuzzing phase
MAX_EXAMPLES: Final = 100
#: the longest one example may take (a request, its variants and their checks)
DEADLINE: Final = timedelta(seconds=20)
API_KEY: Final = "fuzz-key-0123456789"
KEY_HEADER: Final = {"Authorization": f"Bearer {API_KEY}"}

plain = schemathesis.openapi.from_dict(
    document(TINY_CONFIG, keyed=False), config=config(seed=SEED, max_examples=MAX_EXAMPLES)
)
keyed = schemathesis.openapi.from_dict(
    document(TINY_CONFIG, keyed=True), config=config(seed=SEED, max_examples=MAX_EXAMPLES)
)
_SETTINGS: Final = hypothesis.settings(
    deadline=DEADLINE, suppress_health_check=list(hypothesis.HealthCheck), print_blob=False
)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GatewayRig]]:
    """A gateway without an API key and one with, each on its own fake engine."""
    rigs: dict[str, GatewayRig] = {}
    runs: list[Iterator[GatewayRig]] = []
    try:
        for name, options in (("plain", {}), ("keyed", {"api_key": API_KEY})):
            tmp = tmp_path_factory.mktemp(f"fuzz-{name}")
            fixture = Fixture(
                workspace=copy_tiny_workspace(tmp), transcripts=tmp / "transcripts", options=options
            )
            run = running_gateway(fixture, StreamingFakeVllm())
            runs.append(run)
            rigs[name] = next(run)
        yield rigs
    finally:
        for run in runs:
            run.close()


@pytest.mark.parametrize("name", ["plain", "keyed"])
def test_each_gateway_serves_the_document_fuzzed(
    gateways: dict[str, GatewayRig], name: str
) -> None:
    served = httpx.get(f"{gateways[name].url}/openapi.json", headers=KEY_HEADER, timeout=10)
    assert served.json() == document(TINY_CONFIG, keyed=name == "keyed")


@plain.parametrize()
@_SETTINGS
def test_fuzz_the_gateway(case: schemathesis.Case, gateways: dict[str, GatewayRig]) -> None:
    url = gateways["plain"].url
    case.call_and_validate(base_url=url, additional_checks=EXTRA_CHECKS)
    foreign_variants(case, url, {})


@keyed.parametrize()
@_SETTINGS
def test_fuzz_the_gateway_with_an_api_key(
    case: schemathesis.Case, gateways: dict[str, GatewayRig]
) -> None:
    url = gateways["keyed"].url
    case.call_and_validate(base_url=url, headers=KEY_HEADER, additional_checks=EXTRA_CHECKS)
    foreign_variants(case, url, KEY_HEADER)
    wrong_key_variant(case, url)


@pytest.mark.parametrize("name", ["plain", "keyed"])
def test_each_gateway_is_healthy_after_the_fuzzing(
    gateways: dict[str, GatewayRig], name: str
) -> None:
    rig = gateways[name]
    health = httpx.get(f"{rig.url}/health", timeout=10)
    assert health.status_code == 200, health.text
    slots = rig.gateway.slots
    assert (slots.pending, slots.in_flight) == (0, 0)
    answered = len(rig.fake.requests)
    assert answered > 50  # the fuzzing reached the engine, not only admission's refusals
    for stream in (False, True):
        body: dict[str, Any] = {"model": MODEL, "prompt": "after", "max_tokens": 3}
        answer = httpx.post(
            f"{rig.url}/v1/completions",
            json=body | {"stream": stream},
            headers=KEY_HEADER,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert ("[DONE]" in answer.text) == stream
    assert len(rig.fake.requests) == answered + 2
    assert (slots.pending, slots.in_flight) == (0, 0)
