"""One claim replayed on two real Docker engines of this machine: agreement, then a perturbed node.

The second engine is ``scripts/stack/stack.py node2 up``: its own dockerd, socket, data root,
exec root and bridge. It starts empty, so the first replay there pulls the pinned image by digest
from the local registry (``ensure_image``); the test checks it did. A node given a profile whose
numerics environment differs (``OMP_NUM_THREADS=1``) is named, with that fingerprint entry. The
second engine is stopped and its data root removed at the end, whatever the outcome.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .conftest import NODE2, DetserveRunner, ProfileFactory

MAIN = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
READY_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def profiles(profile_factory: ProfileFactory) -> dict[str, Path]:
    def numerics(document: dict[str, object]) -> None:
        runtime = document["runtime"]
        assert isinstance(runtime, dict)
        runtime["environment"] = {**runtime["environment"], "OMP_NUM_THREADS": "1"}

    return {
        "node1": profile_factory("fleet-node1"),
        # the same pins under another port: both engines publish on this machine's loopback
        "node2": profile_factory("fleet-node2"),
        "perturbed": profile_factory("fleet-node2-omp", edit=numerics),
    }


@pytest.fixture(scope="module")
def claim(
    profiles: dict[str, Path], detserve: DetserveRunner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("fleet-claim")
    ran = detserve("run", "--config", profiles["node1"], timeout=READY_TIMEOUT_S)
    assert ran.code == 0, ran
    try:
        sampled = detserve(
            "sample",
            "--config",
            profiles["node1"],
            "--n-prompts",
            "2",
            "--max-tokens",
            "8",
            "--run-log-output",
            out / "claim.runlog.jsonl",
            "--sidecar-output",
            out / "claim.sidecar.json",
        )
        assert sampled.code == 0, sampled
        yield out / "claim.runlog.jsonl"
    finally:
        detserve("stop", "--config", profiles["node1"])


def test_the_claim_replays_on_both_engines_and_they_agree(
    node2: docker.DockerClient,
    claim: Path,
    profiles: dict[str, Path],
    detserve: DetserveRunner,
    pinned_image: str,
    tmp_path: Path,
) -> None:
    with pytest.raises(docker.errors.ImageNotFound):
        node2.images.get(pinned_image)  # a fresh engine: the fleet must pull it
    out = tmp_path / "agree"
    ran = detserve(
        "fleet",
        "--config",
        profiles["node1"],
        "--claim",
        claim,
        "--node",
        f"{MAIN},name=node1",
        "--node",
        f"{NODE2},config={profiles['node2']},name=node2",
        "--output-dir",
        out,
        timeout=2 * READY_TIMEOUT_S,
    )
    try:
        print(ran.out)  # the agreement table, for the record (pytest -s)
        assert ran.code == 0, ran
        assert "AGREEMENT: all 2 nodes replay the claim byte for byte" in ran.out, ran
        report = json.loads((out / "fleet.json").read_text())
        assert [n["verdict"] for n in report["nodes"]] == ["IDENTICAL", "IDENTICAL"]
        assert report["nodes"][1]["environment_differences"] == []
        # pulled by digest from the local registry into the second engine's own store
        assert pinned_image in node2.images.get(pinned_image).attrs["RepoDigests"]
        # the two nodes' sidecars, compared: identical, nothing to explain
        evaluated = detserve(
            "eval-determinism",
            "--run-a",
            out / "node1" / "replay.runlog.jsonl",
            "--run-b",
            out / "node2" / "replay.runlog.jsonl",
            "--sidecar",
            out / "node1" / "replay.sidecar.json",
            "--sidecar",
            out / "node2" / "replay.sidecar.json",
            "--json",
        )
        assert evaluated.code == 0, evaluated
        assert evaluated.json()["explanations"] == []
    finally:
        stopped = detserve("stop", "--config", profiles["node2"], "--docker-host", NODE2)
        assert stopped.code == 0, stopped


def test_the_perturbed_node_is_named_with_its_fingerprint_difference(
    node2: docker.DockerClient,
    claim: Path,
    profiles: dict[str, Path],
    detserve: DetserveRunner,
    tmp_path: Path,
) -> None:
    out = tmp_path / "perturbed"
    ran = detserve(
        "fleet",
        "--config",
        profiles["node1"],
        "--claim",
        claim,
        "--node",
        f"{MAIN},name=node1",
        "--node",
        f"{NODE2},config={profiles['perturbed']},name=node2",
        "--output-dir",
        out,
        "--stop",
        timeout=2 * READY_TIMEOUT_S,
    )
    print(ran.out)
    assert ran.code == 1, ran
    assert "DISAGREEMENT: 1 of 2 nodes replay the claim" in ran.out, ran
    node2_row = next(line for line in ran.out.splitlines() if line.startswith("node2 "))
    assert "NOT A REPLAY" in node2_row, ran.out
    assert (
        "numerics settings: container.numerics_environment.OMP_NUM_THREADS: (unset) -> '1'"
        in node2_row
    ), ran.out
    assert "1 of 2 nodes do not replay the claim" in ran.err, ran
    report = json.loads((out / "fleet.json").read_text())
    node1, perturbed = report["nodes"]
    assert node1["verdict"] == "IDENTICAL"
    assert perturbed["verdict"] == "NOT A REPLAY"
    assert {d["field"] for d in perturbed["environment_differences"]} == {
        "container.numerics_environment.OMP_NUM_THREADS"
    }
