"""``detserve serve`` in front of the real tiny CPU container, driven by the official client.

One container and one gateway (a separate ``detserve serve`` process on a free loopback port)
for the module: the ``openai`` client gets completions, whole and streamed; every answer's
provenance id resolves; the gateway stopped with Ctrl-C closes its transcript, which validates,
and ``detserve replay --claim TRANSCRIPT`` (every exchange sent again) reports IDENTICAL.

Chat needs the tiny model's chat template (request kinds): not here yet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from detserve.runlog.transcript import output_sha256, read_exchanges, validate_transcript

from .conftest import REPO_ROOT, DetserveRunner, ProfileFactory, free_port

MODEL = "tiny-llama"
PROMPTS = ("The quick brown fox", "1, 2, 3, 4, 5,", "def main():")


@dataclass
class Gateway:
    profile: Path
    url: str
    transcripts: Path
    process: subprocess.Popen[str]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def stop(self) -> tuple[int, str, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out, err


@pytest.fixture(scope="module")
def gateway(
    profile_factory: ProfileFactory,
    detserve: DetserveRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    profile = profile_factory("gateway-real")
    started = detserve("run", "--config", profile, timeout=600)
    assert started.code == 0, started
    transcripts = tmp_path_factory.mktemp("gateway") / "transcripts"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "detserve", "serve", "--config", str(profile),
         "--transcript-dir", str(transcripts), "--port", str(port)],
        cwd=REPO_ROOT, env=dict(os.environ), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    running = Gateway(profile, url, transcripts, process)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, running.stop()
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not become healthy"
            time.sleep(0.2)
        yield running
    finally:
        running.stop()
        detserve("stop", "--config", profile)


def test_the_openai_client_gets_answers_with_provenance_and_the_replay_is_identical(
    gateway: Gateway, detserve: DetserveRunner, tmp_path: Path
) -> None:
    client = gateway.client()
    health = httpx.get(f"{gateway.url}/health").json()
    assert health["status"] == "ok"
    assert health["pins"]["vllm_version"] == "0.32.0"
    provenances = []
    whole: dict[str, str] = {}
    for prompt in PROMPTS:
        answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12)
        whole[prompt] = answer.choices[0].text
        provenances.append(answer.model_extra["detserve"])
    for prompt in PROMPTS:
        chunks = list(
            client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, stream=True)
        )
        assert len(chunks) > 1  # really streamed
        # greedy and seeded: streamed or not, the same text
        assert "".join(chunk.choices[0].text for chunk in chunks) == whole[prompt]
        provenances.append(chunks[-1].model_extra["detserve"])
    for provenance in provenances:
        resolved = httpx.get(f"{gateway.url}/v1/provenance/{provenance['id']}")
        assert resolved.status_code == 200
        assert resolved.json() == provenance
    refused = httpx.post(
        f"{gateway.url}/v1/completions",
        json={"model": MODEL, "prompt": "x", "temperature": 0.8},
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "temperature"

    code, out, err = gateway.stop()
    assert code == 0, (out, err)
    (segment,) = sorted(gateway.transcripts.iterdir())
    assert str(segment) in out
    summary = validate_transcript(segment)
    assert summary.footer is not None
    assert summary.footer.reason == "stopped"
    exchanges = read_exchanges(segment)
    assert [e.id for e in exchanges] == [p["id"] for p in provenances]
    for exchange, provenance in zip(exchanges, provenances, strict=True):
        assert (
            output_sha256(exchange.output_token_ids, exchange.text) == (provenance["output_sha256"])
        )
        assert exchange.incomplete is None

    replay_dir = tmp_path / "replay"
    replayed = detserve(
        "replay", "--claim", segment, "--config", gateway.profile, "--output-dir", replay_dir,
        "--json", timeout=600,
    )  # fmt: skip
    assert replayed.code == 0, replayed
    assert replayed.json()["verdict"] == "identical"
    assert (replay_dir / "replay.transcript.jsonl").read_bytes() == segment.read_bytes()
    compared = detserve(
        "eval-determinism", "--run-a", segment, "--run-b", replay_dir / "replay.transcript.jsonl"
    )
    assert compared.code == 0, compared
    assert "IDENTICAL" in compared.out
    report = json.loads((replay_dir / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["identical"] == len(provenances)
