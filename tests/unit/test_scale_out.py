"""The containers of a profile spanning several GPU nodes (on paper: no multi-node run here)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from detserve.errors import InputError
from detserve.profile import LoadedProfile, load_profile
from detserve.runtime.container_spec import build_container_spec
from detserve.runtime.scale_out import (
    NCCL_DETERMINISM,
    NODES_LABEL,
    RANK_LABEL,
    ROLE_LABEL,
    scale_out_containers,
)

from .test_container_spec import GPU_IMAGE, GPU_REVISION, gpu_document

MANIFEST = "ef" * 32


def _profile(tmp_path: Path, **vllm: Any) -> LoadedProfile:
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir(exist_ok=True)
    manifest = tmp_path / "manifests" / "qwen-tp2" / f"{GPU_REVISION}.sha256"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_bytes(b"ab" * 32 + b"  ./config.json\n")
    document = gpu_document(hf_home)
    document["vllm"]["extra_args"].update(vllm)
    path = tmp_path / "qwen-tp2.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return load_profile(path)


@pytest.fixture
def three_nodes(tmp_path: Path) -> tuple[LoadedProfile, Any]:
    loaded = _profile(tmp_path)
    return loaded, scale_out_containers(
        loaded, nodes=3, gpus_per_node=2, head_address="10.0.0.1", manifest=MANIFEST
    )


def test_every_node_gets_the_same_image_mounts_environment_and_manifest(
    three_nodes: tuple[LoadedProfile, Any],
) -> None:
    loaded, containers = three_nodes
    single = build_container_spec(loaded, manifest=MANIFEST)
    assert [(c.role, c.rank) for c in containers] == [("head", 0), ("worker", 1), ("worker", 2)]
    for container in containers:
        kwargs = container.to_create_kwargs()
        assert kwargs["image"] == GPU_IMAGE
        assert kwargs["mounts"] == single.to_create_kwargs()["mounts"]
        assert kwargs["environment"] == {**single.environment, **NCCL_DETERMINISM}
        assert kwargs["network_mode"] == "host"
        assert "ports" not in kwargs
        assert kwargs["device_requests"][0]["Count"] == 2
        labels = kwargs["labels"]
        # the single-node binding labels (profile hash, image, manifest sha256) on every node
        assert {k: v for k, v in labels.items() if not k.startswith("io.detserve.scale-out")} == (
            dict(single.labels)
        )
        assert labels[RANK_LABEL] == str(container.rank)
        assert labels[ROLE_LABEL] == container.role
        assert labels[NODES_LABEL] == "3"


def test_the_head_starts_ray_then_the_server_with_the_plans_parallelism(
    three_nodes: tuple[LoadedProfile, Any],
) -> None:
    loaded, containers = three_nodes
    head = containers[0].to_create_kwargs()
    assert head["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = head["command"]
    ray, server = script.split(" && exec ")
    assert shlex.split(ray) == [
        "ray",
        "start",
        "--disable-usage-stats",
        "--num-gpus=2",
        "--head",
        "--port=6379",
    ]
    words = shlex.split(server)
    assert words[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert words[-6:] == [
        "--tensor-parallel-size",
        "2",
        "--pipeline-parallel-size",
        "3",
        "--distributed-executor-backend",
        "ray",
    ]
    # the rest is the single-node server's arguments, in order, the parallelism moved last
    single = list(build_container_spec(loaded, manifest=MANIFEST).command)
    i = single.index("--tensor-parallel-size")
    assert words[3:-6] == single[:i] + single[i + 2 :]


def test_workers_join_the_head_and_run_nothing_else(
    three_nodes: tuple[LoadedProfile, Any],
) -> None:
    _, containers = three_nodes
    for worker in containers[1:]:
        kwargs = worker.to_create_kwargs()
        assert kwargs["entrypoint"] == ["ray"]
        assert kwargs["command"] == [
            "start",
            "--disable-usage-stats",
            "--num-gpus=2",
            "--block",
            "--address=10.0.0.1:6379",
        ]
        assert kwargs["name"] == f"detserve-qwen-tp2-worker-{worker.rank}"


def test_a_profile_with_another_parallelism_is_refused(tmp_path: Path) -> None:
    loaded = _profile(tmp_path)
    with pytest.raises(InputError, match="parallelism other than the scale-out plan"):
        # the profile's tensor_parallel_size is 2: four GPUs a node would silently change it
        scale_out_containers(loaded, nodes=2, gpus_per_node=4, head_address="10.0.0.1")


def test_one_node_is_not_a_scale_out(
    tmp_path: Path, three_nodes: tuple[LoadedProfile, Any]
) -> None:
    loaded, _ = three_nodes
    with pytest.raises(InputError, match="two or more nodes"):
        scale_out_containers(loaded, nodes=1, gpus_per_node=2, head_address="h")
