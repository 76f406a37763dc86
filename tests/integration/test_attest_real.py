"""env, doctor and a signed claim against the real engine, image and vLLM container.

One tiny container (its own name and port from ``profile_factory``) is started with ``run`` and
stopped at the end. Before it starts, ``env`` fingerprints the pinned image through a
short-lived container and ``doctor`` passes; while it runs, ``env`` reads the running container
and ``doctor`` passes again; then a real sample is attested and verified, and one tampered
envelope fails closed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .conftest import DetserveRunner, ProfileFactory, container_of

READY_TIMEOUT_S = 400


@pytest.fixture(scope="module")
def attest_profile(profile_factory: ProfileFactory) -> Path:
    return profile_factory("attest")


@pytest.fixture(scope="module")
def running(
    attest_profile: Path, detserve: DetserveRunner, docker_client: docker.DockerClient
) -> Iterator[Path]:
    before = detserve("doctor", "--config", attest_profile, "--json")
    assert before.code == 0, before
    started = detserve("run", "--config", attest_profile, timeout=READY_TIMEOUT_S)
    assert started.code == 0, started
    yield attest_profile
    stopped = detserve("stop", "--config", attest_profile)
    assert stopped.code == 0, stopped


def test_env_of_the_pinned_image_before_any_container(
    attest_profile: Path, detserve: DetserveRunner, pinned_image: str
) -> None:
    ran = detserve("env", "--config", attest_profile, "--json")
    assert ran.code == 0, ran
    document = ran.json()
    container = document["fingerprint"]["container"]
    assert container["image"] == pinned_image
    assert container["vllm_version"] == "0.32.0"
    assert container["torch_version"]
    host = document["fingerprint"]["host"]
    assert host["docker_engine_version"]
    assert host["cpu_flags"]
    # no GPU here: null with the reason, never made up
    assert host["gpus"] is None
    assert host["gpu_reason"]


def test_doctor_passes_on_the_tiny_profile_while_it_runs(
    running: Path, detserve: DetserveRunner
) -> None:
    ran = detserve("doctor", "--config", running, "--json")
    assert ran.code == 0, ran
    items = ran.json()["items"]
    assert [item["status"] for item in items] == ["PASS"] * 12, items
    numerics = next(item for item in items if item["name"] == "numerics environment")
    assert f"container {container_of(running)}" in numerics["detail"]
    bound = next(item for item in items if item["name"] == "container bound to the pins")
    assert f"container {container_of(running)}: created exactly as the pins say" in bound["detail"]


def test_env_reads_the_running_container_and_agrees_with_the_image(
    running: Path, detserve: DetserveRunner
) -> None:
    from_container = detserve("env", "--config", running, "--json")
    assert from_container.code == 0, from_container
    # The bound container and its image give the same fingerprint: same hash.
    assert (
        from_container.json()["sha256"]
        == detserve("env", "--config", running, "--json").json()["sha256"]
    )


def test_a_real_sample_attested_verifies_and_a_tampered_one_fails(
    running: Path, detserve: DetserveRunner, tmp_path: Path
) -> None:
    run_log, sidecar = tmp_path / "a.runlog.jsonl", tmp_path / "a.sidecar.json"
    sampled = detserve(
        "sample", "--config", running, "--n-prompts", "2", "--max-tokens", "4",
        "--run-log-output", run_log, "--sidecar-output", sidecar,
    )  # fmt: skip
    assert sampled.code == 0, sampled
    # sample writes the environment fingerprint into the sidecar itself
    sidecar_document = json.loads(sidecar.read_bytes())
    assert sidecar_document["environment"]["container"]["image"] in running.read_text()
    assert detserve("keygen", "--output-dir", tmp_path / "keys").code == 0
    envelope = tmp_path / "a.claim.intoto.json"
    attested = detserve(
        "attest", "--run-log", run_log, "--sidecar", sidecar,
        "--key", tmp_path / "keys" / "detserve.key", "--envelope-output", envelope,
    )  # fmt: skip
    assert attested.code == 0, attested
    public = tmp_path / "keys" / "detserve.pub"
    verify = ["verify-claim", "--envelope", envelope, "--public-key", public, "--run-log", run_log]
    verified = detserve(*verify)
    assert verified.code == 0, verified
    assert "VERIFIED" in verified.out
    # A signed claim replays: signature, subject, pins, then the run and the comparison.
    replayed = detserve(
        "replay", "--claim", envelope, "--public-key", public, "--run-log", run_log,
        "--config", running, "--output-dir", tmp_path / "replay",
    )  # fmt: skip
    assert replayed.code == 0, replayed
    assert "IDENTICAL" in replayed.out

    document = json.loads(envelope.read_bytes())
    document["payloadType"] = "application/json"
    envelope.write_text(json.dumps(document))
    tampered = detserve(*verify)
    assert tampered.code == 1, tampered
    assert "signature does not verify" in tampered.err
    # ... and a replay of it stops at the signature, before the profile is even read
    refused = detserve(
        "replay", "--claim", envelope, "--public-key", public, "--run-log", run_log,
        "--config", tmp_path / "no-such-profile.json", "--output-dir", tmp_path / "replay-2",
    )  # fmt: skip
    assert refused.code == 1, refused
    assert "signature does not verify" in refused.err
    assert not (tmp_path / "replay-2").exists()
