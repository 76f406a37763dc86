"""Where this host reaches a cluster's head: as one container's server (runtime/reach.py) on a
local engine or on a bridge; on the network of a remote head's host, at ``runtime.host`` there,
and never at an address that could be this host's (its loopback above all)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from detserve.errors import EXIT_ENVIRONMENT, ContainerError
from detserve.profile import LoadedProfile, load_profile
from detserve.runtime import cluster_run, reach
from detserve.runtime.cluster import node_containers
from detserve.runtime.cluster_nodes import status
from detserve.runtime.container_spec import manifest_sha256, server_base_url
from detserve.runtime.inspection import ContainerInfo
from detserve.runtime.reach import server_url

from .cluster_rig import cluster_document, cluster_profile, node_engines
from .committed import TinyWorkspace
from .containers import faithful_container

REMOTE = "ssh://operator@gpu-node-1"
#: addresses of no host here (TEST-NET-3, RFC 5737): never bound, never routed to in tests
ELSEWHERE = "203.0.113.7"
HEAD_HOST = "203.0.113.1"


class Engine:
    def __init__(self, address: str | None) -> None:
        self.address = address


def _host_network(tiny_workspace: TinyWorkspace, runtime_host: str) -> LoadedProfile:
    """The tiny cluster on its hosts' network, its head's server on ``runtime_host`` there."""
    document = cluster_document(tiny_workspace.config, network="host", head_address=HEAD_HOST)
    document["runtime"]["host"] = runtime_host
    path = tiny_workspace.config.with_name("tiny-cpu-cluster-host.json")
    path.write_text(json.dumps(document), encoding="utf-8")
    return load_profile(path)


def _head(loaded: LoadedProfile, **changes: object) -> ContainerInfo:
    head = node_containers(loaded, head_ip=None, manifest="ef" * 32)[0]
    return dataclasses.replace(faithful_container(head.spec), **changes)  # type: ignore[arg-type]


def test_a_local_head_is_reached_at_the_profiles_address(tiny_workspace: TinyWorkspace) -> None:
    for loaded in (
        cluster_profile(tiny_workspace.config),
        _host_network(tiny_workspace, "127.0.0.1"),
    ):
        head = _head(loaded, ip_address=None)
        for address in ("unix:///var/run/docker.sock", "tcp://127.0.0.1:2375", None):
            assert server_url(loaded, Engine(address), head) == server_base_url(loaded.profile)


def test_a_remote_head_on_a_bridge_is_reached_at_its_containers_own_address(
    tiny_workspace: TinyWorkspace,
) -> None:
    loaded = cluster_profile(tiny_workspace.config)
    head = _head(loaded, ip_address=ELSEWHERE, gateway_address="203.0.113.254")
    assert server_url(loaded, Engine(REMOTE), head) == f"http://{ELSEWHERE}:8000"


def test_a_remote_head_on_its_hosts_network_is_reached_at_runtime_host_there(
    tiny_workspace: TinyWorkspace,
) -> None:
    loaded = _host_network(tiny_workspace, ELSEWHERE)
    head = _head(loaded, ip_address=None)  # host networking: the engine reports no address
    assert server_url(loaded, Engine(REMOTE), head) == f"http://{ELSEWHERE}:8000"


@pytest.mark.parametrize(
    ("runtime_host", "why"),
    [
        ("127.0.0.1", "this host's or no one's"),
        ("::1", "this host's or no one's"),
        ("0.0.0.0", "this host's or no one's"),
        ("169.254.1.2", "this host's or no one's"),
        ("gpu-node-1", "is no address"),
    ],
)
def test_a_remote_head_on_its_hosts_network_is_never_reached_at_this_hosts_loopback(
    tiny_workspace: TinyWorkspace, runtime_host: str, why: str
) -> None:
    loaded = _host_network(tiny_workspace, runtime_host)
    with pytest.raises(ContainerError) as raised:
        server_url(loaded, Engine(REMOTE), _head(loaded, ip_address=None))
    assert why in raised.value.message
    assert REMOTE in raised.value.message
    assert raised.value.exit_code == EXIT_ENVIRONMENT


def test_a_remote_head_at_an_address_this_host_has_is_refused(
    tiny_workspace: TinyWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = _host_network(tiny_workspace, ELSEWHERE)
    monkeypatch.setattr(reach, "is_this_hosts_address", lambda address: address == ELSEWHERE)
    with pytest.raises(ContainerError, match=f"this host has runtime.host {ELSEWHERE} itself"):
        server_url(loaded, Engine(REMOTE), _head(loaded, ip_address=None))


def test_status_of_a_remote_head_that_cannot_be_reached_safely_says_so(
    tiny_workspace: TinyWorkspace,
) -> None:
    loaded = _host_network(tiny_workspace, "127.0.0.1")
    engines, _ = node_engines(tiny_workspace.manifest)
    engines["head"].address = REMOTE  # the head's engine is another host's
    head = node_containers(loaded, head_ip=None, manifest="ef" * 32)[0]
    engines["head"].containers[head.spec.name] = faithful_container(head.spec)
    state = status(loaded, engines)  # type: ignore[arg-type]
    assert state.health.startswith("unreachable: ")
    assert "this host's or no one's" in state.health
    assert state.base_url == "-"


def test_a_run_never_waits_on_this_hosts_loopback_for_a_remote_head(
    tiny_workspace: TinyWorkspace,
) -> None:
    loaded = _host_network(tiny_workspace, "127.0.0.1")
    engines, _ = node_engines(tiny_workspace.manifest)
    engines["head"].address = REMOTE
    with pytest.raises(ContainerError) as raised:
        cluster_run.run(loaded, engines, manifest=manifest_sha256(loaded), timeout_s=1)  # type: ignore[arg-type]
    assert "this host's or no one's" in raised.value.message
    assert all(not engine.containers for engine in engines.values())  # nothing left running
