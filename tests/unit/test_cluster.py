"""A cluster profile and each node's container: what only a cluster may ask, and what every node
shares with the single container of the same profile."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from detserve.errors import ProfileError, UsageError
from detserve.profile import load_profile
from detserve.runtime.cluster import (
    HEAD_HOSTNAME,
    HEADLESS_LAUNCHER,
    NCCL_DETERMINISM,
    NODE_LABEL,
    NODES_LABEL,
    RANK_LABEL,
    ROLE_LABEL,
    node_containers,
)
from detserve.runtime.container_spec import build_container_spec

from .cluster_rig import MAIN, NODE2, cluster_document, cluster_profile
from .committed import REPO_ROOT, TinyWorkspace
from .test_container_spec import GPU_IMAGE, GPU_REVISION, gpu_document

MANIFEST = "ef" * 32


def _write(tmp: Path, document: dict[str, Any]) -> Path:
    path = tmp / "cluster.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _refused(tiny_workspace: TinyWorkspace, phrase: str, edit: Any) -> None:
    document = cluster_document(tiny_workspace.config)
    edit(document)
    path = _write(tiny_workspace.config.parent, document)
    with pytest.raises(ProfileError) as raised:
        load_profile(path)
    shown = "\n".join(raised.value.details)
    assert phrase in shown, shown


# --- the profile -------------------------------------------------------------------------------


def test_the_committed_cluster_profile_loads_and_one_containers_profile_is_unchanged() -> None:
    cluster = load_profile(REPO_ROOT / "configs" / "tiny-cpu-cluster.json").profile.cluster
    assert cluster is not None
    assert [(n.name, n.docker_host) for n in cluster.nodes] == [("head", MAIN), ("node2", NODE2)]
    single = load_profile(REPO_ROOT / "configs" / "tiny-cpu.json")
    # absent, not null, in the canonical form: a single profile hashes as before clusters
    assert "cluster" not in single.profile.model_dump(mode="json")


CASES: dict[str, tuple[str, Any]] = {
    "one node": (
        "at least 2 items",
        lambda d: d["cluster"].update(nodes=d["cluster"]["nodes"][:1]),
    ),
    "two nodes on one engine": (
        "two nodes on one engine are not two nodes",
        lambda d: d["cluster"]["nodes"][1].update(docker_host=MAIN),
    ),
    "two nodes of one name": (
        "own name; repeated: head",
        lambda d: d["cluster"]["nodes"][1].update(name="head"),
    ),
    "no Docker host URL": (
        "is not a Docker host URL: the scheme must be one of",
        lambda d: d["cluster"]["nodes"][1].update(docker_host="/run/docker.sock"),
    ),
    # the one check of an engine's address (runtime/docker_host.py), as --docker-host has it
    "an engine URL with a path": (
        "an engine URL has no path, query or fragment",
        lambda d: d["cluster"]["nodes"][1].update(docker_host="tcp://node2:2376/v1.47"),
    ),
    "an engine URL with a comma": (
        "a space, a comma or a control character",
        lambda d: d["cluster"]["nodes"][1].update(docker_host="ssh://node2,config=x"),
    ),
    "an engine URL with a password": (
        "a password has no place in an engine URL",
        lambda d: d["cluster"]["nodes"][1].update(docker_host="tcp://user:secret@node2:2376"),
    ),
    "host network without the head's address": (
        "network 'host' needs head_address",
        lambda d: d["cluster"].update(network="host"),
    ),
    "a head address on a bridge": (
        "'bridge' takes none",
        lambda d: d["cluster"].update(head_address="10.0.0.1"),
    ),
    "a head address that is no address": (
        "expected an IP address",
        lambda d: d["cluster"].update(network="host", head_address="head.example"),
    ),
    "Ray on vLLM's CPU build": (
        "current platform cpu does not support ray",
        lambda d: d["cluster"].update(executor="ray"),
    ),
    "a layout in the engine options": (
        "--pipeline-parallel-size",
        lambda d: d["vllm"].setdefault("extra_args", {}).update({"--pipeline-parallel-size": 2}),
    ),
    "eager on vLLM's CPU build": (
        "intermediate_tensors is not None",
        lambda d: d["vllm"].update(enforce_eager=True),
    ),
    "CPU placement of one container": (
        "runtime.cpu_placement",
        lambda d: d["runtime"].update(cpu_placement="engine-core-with-worker"),
    ),
    "an unknown cluster key": (
        "cluster.privileged: unknown key",
        lambda d: d["cluster"].update(privileged=True),
    ),
    "host networking asked of one container": (
        "runtime.network_mode: unknown key",
        lambda d: (d.pop("cluster"), d["runtime"].update(network_mode="host")),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES), ids=str)
def test_what_a_cluster_may_not_be_is_refused(tiny_workspace: TinyWorkspace, case: str) -> None:
    phrase, edit = CASES[case]
    _refused(tiny_workspace, phrase, edit)


def test_one_containers_paths_refuse_a_cluster_profile(tiny_workspace: TinyWorkspace) -> None:
    loaded = cluster_profile(tiny_workspace.config)
    with pytest.raises(UsageError, match="is a cluster of 2 nodes, not one container"):
        build_container_spec(loaded)


# --- each node's container ---------------------------------------------------------------------


def test_every_node_runs_the_single_containers_pins_plus_its_place_in_the_layout(
    tiny_workspace: TinyWorkspace,
) -> None:
    loaded = cluster_profile(tiny_workspace.config)
    head, worker = node_containers(loaded, head_ip="172.17.0.2", manifest=MANIFEST)
    single = build_container_spec(loaded, manifest=MANIFEST, cluster_node=True)
    layout = [
        "--pipeline-parallel-size", "2", "--distributed-executor-backend", "mp",
        "--nnodes", "2", "--node-rank",
    ]  # fmt: skip
    for node in (head, worker):
        spec = node.spec
        assert (spec.image, spec.mounts, spec.environment) == (
            single.image,
            single.mounts,
            single.environment,
        )
        assert {k: v for k, v in spec.labels.items() if "cluster" not in k} == dict(single.labels)
        assert spec.labels[RANK_LABEL] == str(node.rank)
        assert spec.labels[ROLE_LABEL] == node.role
        assert spec.labels[NODE_LABEL] == node.node.name
        assert spec.labels[NODES_LABEL] == "2"
        rest = list(spec.command[len(single.command) :])
        assert spec.command[: len(single.command)] == single.command
        assert rest[:7] == layout
        assert rest[7:9] == [str(node.rank), "--master-addr"]
        assert rest[9:12] == [HEAD_HOSTNAME, "--master-port", "29501"]
        assert spec.network_mode is None  # each on its engine's bridge
    # the head serves, as one container does; the worker holds its stage, headless
    assert head.spec.entrypoint is None
    assert head.spec.published
    assert not head.spec.extra_hosts
    assert head.spec.hostname == HEAD_HOSTNAME
    assert head.spec.to_create_kwargs()["ports"] == {"8000/tcp": ("127.0.0.1", 8000)}
    assert worker.spec.command[-1] == "--headless"
    assert worker.spec.entrypoint == ("python3", "-c", HEADLESS_LAUNCHER)
    assert not worker.spec.published
    assert "ports" not in worker.spec.to_create_kwargs()
    assert dict(worker.spec.extra_hosts) == {HEAD_HOSTNAME: "172.17.0.2"}
    assert (head.spec.name, worker.spec.name) == (
        "detserve-tiny-cpu-head",
        "detserve-tiny-cpu-node2",
    )


def test_the_headless_launcher_dispatches_as_vllms_own_serve_command() -> None:
    # what `vllm serve` does (vllm/entrypoints/cli/main.py), without its version lookup
    assert "importlib.metadata" not in HEADLESS_LAUNCHER
    assert HEADLESS_LAUNCHER.splitlines()[-1] == "ServeSubcommand.cmd(args)"
    compile(HEADLESS_LAUNCHER, "launcher", "exec")


def test_before_the_head_runs_on_a_bridge_only_its_container_is_known(
    tiny_workspace: TinyWorkspace,
) -> None:
    loaded = cluster_profile(tiny_workspace.config)
    (head,) = node_containers(loaded, head_ip=None)  # the workers' need the head's address
    assert head.rank == 0
    assert head.node.name == "head"


def test_on_the_hosts_network_nothing_is_published_and_the_server_listens_where_pinned(
    tiny_workspace: TinyWorkspace,
) -> None:
    loaded = cluster_profile(
        tiny_workspace.config, network="host", head_address="192.0.2.10", rendezvous_port=29600
    )
    nodes = node_containers(loaded, head_ip=None, manifest=MANIFEST)
    for node in nodes:
        kwargs = node.spec.to_create_kwargs()
        assert kwargs["network_mode"] == "host"
        assert "ports" not in kwargs
        assert "extra_hosts" not in kwargs
        assert "hostname" not in kwargs
        words = list(node.spec.command)
        # not every interface of the host at the container's port: the profile's address
        assert words[words.index("--host") + 1] == "127.0.0.1"
        assert words[words.index("--port") + 1] == "8000"
        assert words[words.index("--master-addr") + 1] == "192.0.2.10"
        assert words[words.index("--master-port") + 1] == "29600"


def _gpu_cluster(tmp_path: Path) -> Any:
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    manifest = tmp_path / "manifests" / "qwen-tp2" / f"{GPU_REVISION}.sha256"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(b"ab" * 32 + b"  ./config.json\n")
    document = gpu_document(hf_home)
    document["cluster"] = {
        "nodes": [
            {"name": f"gpu{n}", "docker_host": f"ssh://detserve@gpu-node-{n}"} for n in range(3)
        ],
        "executor": "ray",
        "network": "host",
        "head_address": "10.0.0.1",
        "rendezvous_port": 6379,
    }
    path = tmp_path / "qwen-tp2.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return load_profile(path)


def test_a_ray_cluster_of_gpu_nodes_starts_ray_then_the_server_on_the_head(
    tmp_path: Path,
) -> None:
    loaded = _gpu_cluster(tmp_path)
    head, *workers = node_containers(loaded, head_ip=None, manifest=MANIFEST)
    single = build_container_spec(loaded, manifest=MANIFEST, cluster_node=True)
    assert head.spec.entrypoint == ("/bin/sh", "-c")
    (script,) = head.spec.command
    ray, server = script.split(" && exec ")
    assert shlex.split(ray) == [
        "ray", "start", "--disable-usage-stats", "--num-gpus=2", "--head", "--port=6379",
    ]  # fmt: skip
    words = shlex.split(server)
    assert words[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert words[-4:] == ["--pipeline-parallel-size", "3", "--distributed-executor-backend", "ray"]
    host = words.index("--host")
    assert words[host + 1] == "127.0.0.1"
    assert "--tensor-parallel-size" in words
    for worker in workers:
        assert worker.spec.entrypoint == ("ray",)
        assert worker.spec.command == (
            "start", "--disable-usage-stats", "--num-gpus=2", "--block", "--address=10.0.0.1:6379",
        )  # fmt: skip
    for node in (head, *workers):
        kwargs = node.spec.to_create_kwargs()
        assert kwargs["image"] == GPU_IMAGE
        assert kwargs["environment"] == {**single.environment, **NCCL_DETERMINISM}
        assert kwargs["device_requests"][0]["Count"] == 2
        assert kwargs["ipc_mode"] == "host"


def test_the_committed_two_hosts_of_eight_gpus_profile_gives_the_guides_containers(
    tmp_path: Path,
) -> None:
    """docs/scale-out.md's profile, its pins filled in a copy: what each GPU node would run."""
    document = json.loads(
        (REPO_ROOT / "configs" / "qwen3-235b-a22b-instruct-2507-2x8.json").read_text()
    )
    document["model"]["revision"] = GPU_REVISION
    document["runtime"]["image"] = GPU_IMAGE
    document["snapshot"] = {"hf_home": str(tmp_path / "hf-home"), "manifest_dir": "manifests"}
    manifest = tmp_path / "manifests" / document["name"] / f"{GPU_REVISION}.sha256"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(b"ab" * 32 + b"  ./config.json\n")
    loaded = load_profile(_write(tmp_path, document))
    head, worker = node_containers(loaded, head_ip=None, manifest=MANIFEST)
    (script,) = head.spec.command
    assert "--tensor-parallel-size 8" in script
    assert script.endswith("--pipeline-parallel-size 2 --distributed-executor-backend ray")
    assert worker.spec.command[-1] == "--address=10.0.0.1:6379"
    for node in (head, worker):
        kwargs = node.spec.to_create_kwargs()
        assert kwargs["network_mode"] == "host"
        assert kwargs["ipc_mode"] == "host"
        assert kwargs["shm_size"] == "16g"
        assert kwargs["device_requests"][0]["Count"] == 8
        assert kwargs["environment"]["VLLM_BATCH_INVARIANT"] == "1"
        assert kwargs["environment"]["NCCL_ALGO"] == "Ring"
