"""A cluster's life on engines that keep containers as Docker reports them: every node bound,
every failure naming its node, and nothing half-started left behind."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from detserve.errors import (
    EXIT_ENVIRONMENT,
    EXIT_VERIFICATION,
    ContainerError,
    EngineError,
    PinMismatch,
    RegistryError,
    SnapshotMismatch,
)
from detserve.runtime import cluster_nodes, cluster_run
from detserve.runtime.cluster import HEAD_HOSTNAME, RANK_LABEL
from detserve.runtime.cluster_nodes import ClusterWatch, checked_cluster, ray_version, watch_nodes
from detserve.runtime.container_spec import manifest_sha256

from .cluster_rig import NodeEngine, cluster_profile, node_engines
from .committed import CliRunner, TinyWorkspace

HEAD = "detserve-tiny-cpu-head"
WORKER = "detserve-tiny-cpu-node2"


@pytest.fixture
def cluster(tiny_workspace: TinyWorkspace) -> tuple[Any, dict[str, NodeEngine], list[str]]:
    loaded = cluster_profile(tiny_workspace.config)
    engines, journal = node_engines(tiny_workspace.manifest)
    return loaded, engines, journal


def _start(cluster: tuple[Any, dict[str, NodeEngine], list[str]]) -> Any:
    loaded, engines, _ = cluster
    return cluster_run.start(loaded, engines, manifest=manifest_sha256(loaded))


def test_the_head_starts_first_and_the_worker_reaches_it_by_its_address(cluster: Any) -> None:
    loaded, engines, journal = cluster
    started = _start(cluster)
    assert journal == [
        "head: pull",
        "node2: pull",  # every node has the image before anything starts
        f"head: start {HEAD}",
        f"node2: start {WORKER}",
    ]
    worker = engines["node2"].containers[WORKER]
    assert worker.config is not None
    assert worker.config.extra_hosts == (f"{HEAD_HOSTNAME}:172.17.0.2",)
    assert not started.already_running
    bound = checked_cluster(loaded, engines, what="sample from")
    assert [(b.node.node.name, b.node.rank) for b in bound] == [("head", 0), ("node2", 1)]
    assert _start(cluster).already_running  # the same pins on every node: left alone


def test_a_node_that_cannot_start_leaves_nothing_running(cluster: Any) -> None:
    _, engines, journal = cluster
    engines["node2"].fail_create = "cannot start: no space left"
    with pytest.raises(ContainerError) as raised:
        _start(cluster)
    assert raised.value.message.startswith("node node2 (rank 1, worker) on unix:///run/")
    assert journal[-1] == f"head: remove {HEAD}"
    assert engines["head"].containers == {}
    assert engines["node2"].containers == {}


def test_a_node_without_the_image_starts_nothing(cluster: Any) -> None:
    _, engines, journal = cluster
    engines["node2"].fail_pull = "registry 127.0.0.1:5000 has no image"
    with pytest.raises(RegistryError) as raised:
        _start(cluster)
    assert "node node2" in raised.value.message
    assert raised.value.exit_code == EXIT_ENVIRONMENT
    assert not any("start" in line for line in journal)


def _tamper(engine: NodeEngine, name: str, **changes: Any) -> None:
    info = engine.containers[name]
    config = info.config
    assert config is not None
    config_changes = {k: v for k, v in changes.items() if hasattr(config, k)}
    info_changes = {k: v for k, v in changes.items() if not hasattr(config, k)}
    engine.containers[name] = dataclasses.replace(
        info, config=dataclasses.replace(config, **config_changes), **info_changes
    )


TAMPERED: dict[str, tuple[str, dict[str, Any], str]] = {
    "a worker reaching another head": (
        WORKER,
        {"extra_hosts": (f"{HEAD_HOSTNAME}:10.0.0.66",)},
        "extra hosts: expected",
    ),
    "a worker in another place of the layout": (
        WORKER,
        {"labels": {RANK_LABEL: "0"}},
        "io.detserve.cluster.rank: expected 1",
    ),
    "a worker publishing a port": (
        WORKER,
        {"port_bindings": {"8000/tcp": (("0.0.0.0", "8000"),)}},
        "published ports: expected",
    ),
    "a worker on the host's network": (WORKER, {"network_mode": "host"}, "network mode"),
    "a head under another name": (HEAD, {"hostname": "elsewhere"}, "hostname: expected"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED), ids=str)
def test_a_node_not_bound_to_the_pins_and_layout_is_refused_by_name(
    cluster: Any, case: str
) -> None:
    loaded, engines, _ = cluster
    _start(cluster)
    name, changes, phrase = TAMPERED[case]
    engine = engines["head" if name == HEAD else "node2"]
    if "labels" in changes:
        changes = {"labels": {**engine.containers[name].labels, **changes["labels"]}}
    _tamper(engine, name, **changes)
    with pytest.raises(PinMismatch) as raised:
        checked_cluster(loaded, engines, what="sample from")
    assert raised.value.exit_code == EXIT_VERIFICATION
    assert raised.value.message.startswith(f"node {engine.name} ")
    assert any(phrase in line for line in raised.value.details), raised.value.details


def test_a_missing_or_stopped_node_is_named(cluster: Any) -> None:
    loaded, engines, _ = cluster
    _start(cluster)
    engines["node2"].kill(WORKER)
    with pytest.raises(ContainerError, match=r"^node node2 .* is exited \(exit code 137\)"):
        checked_cluster(loaded, engines, what="sample from")
    del engines["node2"].containers[WORKER]
    with pytest.raises(ContainerError, match=f"^node node2 .*: no container {WORKER}"):
        checked_cluster(loaded, engines, what="sample from")


def test_a_worker_that_dies_or_restarts_mid_run_fails_the_watch(cluster: Any) -> None:
    loaded, engines, _ = cluster
    _start(cluster)
    bound = checked_cluster(loaded, engines, what="sample from")
    watch = ClusterWatch(bound, engines, interval_s=3600)
    watch.check()  # within the interval: nothing asked
    engines["node2"].kill(WORKER)
    watch.check()  # still within the interval
    with pytest.raises(ContainerError, match=r"^node node2 .* exited .* no run log was written"):
        watch.check(force=True)
    engines["node2"].containers[WORKER] = dataclasses.replace(
        bound[1].container, started_at="2026-01-02T00:00:00Z"
    )
    with pytest.raises(ContainerError, match="restarted"):
        watch_nodes(bound, engines, during="while sampling")


def test_stop_removes_the_workers_first_and_only_this_profiles(cluster: Any) -> None:
    loaded, engines, journal = cluster
    _start(cluster)
    stopped = cluster_run.stop(loaded, engines)
    assert stopped.removed == (("node2", WORKER), ("head", HEAD))
    assert journal[-2:] == [f"node2: remove {WORKER}", f"head: remove {HEAD}"]
    assert cluster_run.stop(loaded, engines).removed == ()
    _start(cluster)
    foreign = engines["head"].containers[HEAD]
    engines["head"].containers[HEAD] = dataclasses.replace(
        foreign, labels={**foreign.labels, "io.detserve.profile": "another"}
    )
    with pytest.raises(ContainerError, match="not started by detserve for profile tiny-cpu"):
        cluster_run.stop(loaded, engines)
    assert WORKER not in engines["node2"].containers  # the others were still stopped


def test_every_nodes_snapshot_is_verified_inside_its_container(
    cluster: Any, tiny_workspace: TinyWorkspace
) -> None:
    loaded, engines, _ = cluster
    _start(cluster)
    bound = checked_cluster(loaded, engines, what="verify")
    files = len(tiny_workspace.manifest.read_bytes().splitlines())
    assert cluster_run.verify_nodes(loaded, engines, bound) == {"head": files, "node2": files}
    lines = tiny_workspace.manifest.read_bytes().splitlines(keepends=True)
    changed = b"0" * 64 + lines[0][64:]
    engines["node2"].hash_output = b"".join([changed, *lines[1:]])
    with pytest.raises(SnapshotMismatch) as raised:
        cluster_run.verify_nodes(loaded, engines, bound)
    assert raised.value.message.startswith("node node2 ")
    assert raised.value.details[0].startswith("changed: ./")
    engines["node2"].hash_output = b"".join(lines[1:])
    with pytest.raises(SnapshotMismatch, match="node node2") as raised:
        cluster_run.verify_nodes(loaded, engines, bound)
    assert raised.value.details[0].startswith("missing: ./")


def test_the_ray_version_is_read_from_the_heads_image(cluster: Any) -> None:
    loaded, engines, _ = cluster
    _start(cluster)
    bound = checked_cluster(loaded, engines, what="read")
    assert ray_version(engines, bound[0]) is None  # the plain image has no Ray
    assert "importlib.metadata" in engines["head"].exec_log[-1]


def test_status_names_each_node_and_its_differences(cluster: Any) -> None:
    loaded, engines, _ = cluster
    state = cluster_nodes.status(loaded, engines)
    assert [item.container for item in state.nodes] == [None, None]
    assert state.health == "no running head"
    _start(cluster)
    _tamper(engines["node2"], WORKER, network_mode="host")
    state = cluster_nodes.status(loaded, engines)
    assert state.nodes[0].mismatches == ()
    assert any("network mode" in line for line in state.nodes[1].mismatches)
    with pytest.raises(PinMismatch):
        state.check()


def test_on_the_hosts_network_a_node_on_its_own_network_is_not_bound(
    tiny_workspace: TinyWorkspace,
) -> None:
    loaded = cluster_profile(tiny_workspace.config, network="host", head_address="192.0.2.10")
    engines, _ = node_engines(tiny_workspace.manifest)
    cluster_run.start(loaded, engines, manifest=manifest_sha256(loaded))
    assert len(checked_cluster(loaded, engines, what="sample from")) == 2
    _tamper(engines["node2"], WORKER, network_mode="default")
    with pytest.raises(PinMismatch) as raised:
        checked_cluster(loaded, engines, what="sample from")
    assert "network mode: expected host, found default" in raised.value.details


def test_a_node_whose_engine_does_not_answer_does_not_keep_the_others_running(
    cluster: Any,
) -> None:
    loaded, engines, _ = cluster
    _start(cluster)
    reachable = {"head": engines["head"]}  # node2's engine is down
    with pytest.raises(EngineError, match=r"^node node2 .* does not answer"):
        cluster_run.stop(loaded, reachable)
    assert engines["head"].containers == {}


def test_a_stopped_head_is_named_as_stopped(cluster: Any) -> None:
    loaded, engines, _ = cluster
    _start(cluster)
    engines["head"].kill(HEAD)
    with pytest.raises(ContainerError, match=r"^node head \(rank 0, head\) .* is exited"):
        checked_cluster(loaded, engines, what="sample from")


def test_when_the_head_stopped_because_its_worker_died_both_are_named(cluster: Any) -> None:
    loaded, engines, _ = cluster
    _start(cluster)
    bound = checked_cluster(loaded, engines, what="sample from")
    engines["node2"].kill(WORKER)  # exit code 137
    head = engines["head"].containers[HEAD]
    engines["head"].containers[HEAD] = dataclasses.replace(
        head, running=False, status="exited", exit_code=0
    )
    with pytest.raises(ContainerError) as raised:
        watch_nodes(bound, engines, during="while sampling")
    message = raised.value.message
    assert "node head (rank 0, head)" in message
    assert "exited (exit code 0)" in message
    assert "node node2 (rank 1, worker)" in message
    assert "exited (exit code 137)" in message
    assert "node2: last 1 log lines:" in raised.value.details


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("run", ("--hash",)),
        ("run", ("--docker-host", "unix:///run/other.sock")),
        ("status", ("--docker-host", "unix:///run/other.sock")),
        ("stop", ("--docker-host", "unix:///run/other.sock")),
    ],
)
def test_options_of_one_container_are_refused_for_a_cluster(
    tiny_workspace: TinyWorkspace, cli: CliRunner, command: str, option: tuple[str, ...]
) -> None:
    loaded = cluster_profile(tiny_workspace.config)
    ran = cli(command, "--config", loaded.path, *option)
    assert ran.code == 2, ran
    assert f"is a cluster: {option[0]} is for one container" in ran.err


def test_sample_on_a_cluster_takes_no_docker_host(
    tiny_workspace: TinyWorkspace, cli: CliRunner, tmp_path: Path
) -> None:
    loaded = cluster_profile(tiny_workspace.config)
    ran = cli(
        "sample", "--config", loaded.path, "--docker-host", "unix:///run/other.sock",
        "--run-log-output", tmp_path / "a.runlog.jsonl", "--sidecar-output", tmp_path / "a.json",
    )  # fmt: skip
    assert ran.code == 2, ran
    assert "its nodes name their engines" in ran.err
