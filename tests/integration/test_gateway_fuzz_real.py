"""Schemathesis, briefly, against ``detserve serve`` in front of the real tiny CPU container.

The same run as ``tests/unit/test_gateway_fuzz.py`` (:mod:`gateway_fuzzing`: the same checks,
the document each gateway serves, a fixed seed), over the real engine instead of the fake, with
a small budget: the document's examples and :data:`MAX_EXAMPLES` fuzzed examples per operation
(no coverage phase: its few hundred cases per operation belong to the fake). Two gateway
processes share one container: one without an API key, one with (``--secrets-file``). Each
case is also sent with a foreign ``Origin`` and ``Host`` (403) and, to the keyed one, with a
wrong key (401). No 5xx, no error event in a stream, every 4xx in OpenAI's shape, every answer as
documented; afterwards both are healthy and answer, and their transcripts, once they are
stopped, validate.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Final

import httpx
import hypothesis
import pytest
import schemathesis

from detserve.runlog.transcript import validate_transcript
from gateway_fuzzing import (
    EXTRA_CHECKS,
    config,
    document,
    foreign_variants,
    wrong_key_variant,
)

from .conftest import TINY_CONFIG, DetserveRunner, ProfileFactory
from .gateway_process import MODEL, GatewayProcess, start_gateway

pytestmark = pytest.mark.integration

SEED: Final = 22
#: fuzzed examples per operation: a handful
MAX_EXAMPLES: Final = 5
#: a generation of up to 511 tokens on two shared cores, and its variants
DEADLINE: Final = timedelta(seconds=120)
API_KEY: Final = "fuzz-real-key-0123456789"
KEY_HEADER: Final = {"Authorization": f"Bearer {API_KEY}"}

plain = schemathesis.openapi.from_dict(
    document(TINY_CONFIG, keyed=False),
    config=config(seed=SEED, max_examples=MAX_EXAMPLES, coverage=False),
)
keyed = schemathesis.openapi.from_dict(
    document(TINY_CONFIG, keyed=True),
    config=config(seed=SEED, max_examples=MAX_EXAMPLES, coverage=False),
)
_SETTINGS: Final = hypothesis.settings(
    deadline=DEADLINE, suppress_health_check=list(hypothesis.HealthCheck), print_blob=False
)


@pytest.fixture(scope="module")
def gateways(
    profile_factory: ProfileFactory,
    detserve: DetserveRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, GatewayProcess]]:
    profile = profile_factory("gateway-fuzz")
    started = detserve("run", "--config", profile, timeout=600)
    assert started.code == 0, started
    work = tmp_path_factory.mktemp("gateway-fuzz")
    secrets = work / "secrets.env"
    secrets.write_text(f"DETSERVE_API_KEY={API_KEY}\n", encoding="utf-8")
    secrets.chmod(0o600)
    running: dict[str, GatewayProcess] = {}
    try:
        running["plain"] = start_gateway(profile, work / "plain")
        running["keyed"] = start_gateway(profile, work / "keyed", "--secrets-file", str(secrets))
        yield running
    finally:
        for gateway in running.values():
            gateway.stop()
        detserve("stop", "--config", profile)


@pytest.mark.parametrize("name", ["plain", "keyed"])
def test_each_gateway_serves_the_document_fuzzed(
    gateways: dict[str, GatewayProcess], name: str
) -> None:
    served = httpx.get(f"{gateways[name].url}/openapi.json", headers=KEY_HEADER, timeout=10)
    assert served.json() == document(TINY_CONFIG, keyed=name == "keyed")


@plain.parametrize()
@_SETTINGS
def test_fuzz_the_real_gateway(
    case: schemathesis.Case, gateways: dict[str, GatewayProcess]
) -> None:
    url = gateways["plain"].url
    case.call_and_validate(base_url=url, additional_checks=EXTRA_CHECKS)
    foreign_variants(case, url, {})


@keyed.parametrize()
@_SETTINGS
def test_fuzz_the_real_gateway_with_an_api_key(
    case: schemathesis.Case, gateways: dict[str, GatewayProcess]
) -> None:
    url = gateways["keyed"].url
    case.call_and_validate(base_url=url, headers=KEY_HEADER, additional_checks=EXTRA_CHECKS)
    foreign_variants(case, url, KEY_HEADER)
    wrong_key_variant(case, url)


def test_both_are_healthy_afterwards_and_their_transcripts_validate(
    gateways: dict[str, GatewayProcess],
) -> None:
    for gateway in gateways.values():
        assert gateway.health().status_code == 200, gateway.health().text
        answer = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            headers=KEY_HEADER,
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
    for gateway in gateways.values():
        code, _out, err = gateway.stop()
        assert code == 0, err
        segments = gateway.segments()
        assert segments
        exchanges = sum(validate_transcript(segment).n_exchanges for segment in segments)
        assert exchanges > 0
