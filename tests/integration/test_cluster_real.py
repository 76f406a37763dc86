"""The tiny model served by a cluster of this machine's two Docker engines, for real.

The head runs on the default engine, the worker on ``scripts/stack/stack.py node2`` (its own
dockerd, data root and bridge, 10.99.0.0/24), one pipeline stage each, over vLLM's own executor
across nodes (vLLM's CPU build has no Ray device: ``docs/scale-out.md``). Each container is on its
engine's bridge with its own address; the bridges route through this host, so the worker reaches
the head at the address the default engine gave it. The second engine starts empty and pulls the
pinned image by digest from the local registry. Checked here: two cluster lifetimes give
byte-identical run logs whose pins hold the layout; ``check`` passes on the cluster; a worker
killed through the Docker SDK while a claim is sampled leaves no claim, and the error names it.
The second engine is stopped and its data root removed at the end, whatever the outcome.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from detserve.runlog import validate_run_log

from .conftest import REPO_ROOT, DetserveRunner, ProfileFactory, wait_for_run_log

MAIN = "unix:///var/run/docker.sock"
READY_TIMEOUT_S = 900
EXIT_ENVIRONMENT = 3


@pytest.fixture(scope="module")
def cluster(
    node2: docker.DockerClient, profile_factory: ProfileFactory, detserve: DetserveRunner
) -> Iterator[Path]:
    def as_cluster(document: dict[str, Any]) -> None:
        committed = json.loads((REPO_ROOT / "configs" / "tiny-cpu-cluster.json").read_text())
        document["runtime"].pop("cpu_placement", None)
        document["vllm"] = committed["vllm"]
        document["cluster"] = committed["cluster"]

    path = profile_factory("cluster", edit=as_cluster)
    try:
        yield path
    finally:
        detserve("stop", "--config", path)


def _sample(detserve: DetserveRunner, config: Path, out: Path, name: str) -> Path:
    ran = detserve(
        "sample",
        "--config",
        config,
        "--n-prompts",
        "4",
        "--max-tokens",
        "16",
        "--run-log-output",
        out / f"{name}.runlog.jsonl",
        "--sidecar-output",
        out / f"{name}.sidecar.json",
        timeout=READY_TIMEOUT_S,
    )
    assert ran.code == 0, ran
    return out / f"{name}.runlog.jsonl"


def test_two_cluster_lifetimes_give_byte_identical_claims_and_check_passes(
    cluster: Path, detserve: DetserveRunner, tmp_path: Path, node2: docker.DockerClient
) -> None:
    logs = []
    for lifetime in ("first", "second"):
        ran = detserve("run", "--config", cluster, "--json", timeout=READY_TIMEOUT_S)
        assert ran.code == 0, ran
        report = ran.json()
        assert [n["name"] for n in report["cluster"]["nodes"]] == ["head", "node2"]
        assert set(report["snapshot_verified_on_nodes"]) == {"head", "node2"}
        state = detserve("status", "--config", cluster, "--json")
        assert state.code == 0, state
        assert [n["pins_match"] for n in state.json()["nodes"]] == [True, True]
        logs.append(_sample(detserve, cluster, tmp_path, lifetime))
        if lifetime == "first":
            checked = detserve(
                "check",
                "--config",
                cluster,
                "--output-dir",
                tmp_path / "check",
                "--tier",
                "1",
                "--runs",
                "2",
                "--concurrency",
                "2",
                "--n-prompts",
                "2",
                "--max-tokens",
                "8",
                timeout=READY_TIMEOUT_S,
            )
            assert checked.code == 0, checked
            stopped = detserve("stop", "--config", cluster)
            assert stopped.code == 0, stopped
            assert node2.containers.list(all=True) == []
        # the second lifetime is left running for the next test (one cluster start less in CI)
    first, second = (path.read_bytes() for path in logs)
    assert first == second
    header = validate_run_log(logs[0]).header
    assert header.pins.layout is not None
    assert header.pins.layout.model_dump(mode="json") == {
        "executor": "mp",
        "nodes": 2,
        "pipeline_parallel_size": 2,
        "ray_version": None,
        "tensor_parallel_size": 1,
    }
    sidecars = [
        json.loads((tmp_path / f"{n}.sidecar.json").read_text()) for n in ("first", "second")
    ]
    assert [n["name"] for n in sidecars[0]["cluster_nodes"]] == ["head", "node2"]
    # the fingerprint lists every node's container, read inside it
    nodes = sidecars[0]["environment"]["nodes"]
    assert [(n["name"], n["container"]["vllm_version"]) for n in nodes] == [
        ("head", "0.32.0"),
        ("node2", "0.32.0"),
    ]
    # two lifetimes: other containers, the same claim
    assert (
        sidecars[0]["cluster_nodes"][1]["container_id"]
        != (sidecars[1]["cluster_nodes"][1]["container_id"])
    )


def test_a_worker_killed_mid_run_leaves_no_claim(
    cluster: Path, detserve: DetserveRunner, tmp_path: Path, node2: docker.DockerClient
) -> None:
    ran = detserve("run", "--config", cluster, timeout=READY_TIMEOUT_S)  # reused when running
    assert ran.code == 0, ran
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "detserve",
        "sample",
        "--config",
        str(cluster),
        "--max-tokens",
        "256",  # long enough that the kill lands mid-run
        "--run-log-output",
        str(out / "x.runlog.jsonl"),
        "--sidecar-output",
        str(out / "x.sidecar.json"),
    ]
    sampling = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    try:
        wait_for_run_log(sampling, out, 120)
        time.sleep(1.0)  # a few samples in
        assert sampling.poll() is None, "sampling finished before the worker could be killed"
        (worker,) = node2.containers.list()
        worker.kill()
        _, stderr = sampling.communicate(timeout=READY_TIMEOUT_S)
    finally:
        if sampling.poll() is None:
            sampling.kill()
    assert sampling.returncode == EXIT_ENVIRONMENT, stderr
    assert "node node2 (rank 1, worker)" in stderr, stderr
    assert sorted(p.name for p in out.iterdir()) == [], "a claim was left behind"
