"""Where the bound container's server is reached: this host's published port for a local engine,
the container's own address for a remote one, never a loopback port of this host, where another
container could answer for it; an address that cannot be the remote container's is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from detserve.errors import EXIT_ENVIRONMENT, ContainerError
from detserve.profile import LoadedProfile
from detserve.runtime import reach
from detserve.runtime.container_spec import build_container_spec, server_base_url
from detserve.runtime.docker_host import engine_on_this_host
from detserve.runtime.inspection import ContainerInfo
from detserve.runtime.lifecycle import status
from detserve.runtime.reach import is_this_hosts_address, server_url

from .containers import faithful_container
from .test_sampling_faults import Rig, rig  # noqa: F401 -- the sampling rig fixture

REMOTE = "ssh://operator@gpu-node-1"
#: an address of no host here (TEST-NET-3, RFC 5737): never bound, never routed to in tests
ELSEWHERE = "203.0.113.7"


@pytest.mark.parametrize(
    ("address", "local"),
    [
        (None, True),
        ("unix:///var/run/docker.sock", True),
        ("unix:///run/detserve-node2/docker.sock", True),
        ("npipe:////./pipe/docker_engine", True),
        ("tcp://127.0.0.1:2375", True),
        ("tcp://localhost:2375", True),
        ("tcp://[::1]:2375", True),
        ("tcp://gpu-node-1:2376", False),
        ("https://10.0.0.5:2376", False),
        ("ssh://operator@gpu-node-1", False),
        ("ssh://localhost", False),  # a port forwarded over ssh may lead anywhere
    ],
)
def test_which_engines_publish_on_this_host(address: str | None, local: bool) -> None:
    assert engine_on_this_host(address) is local


class Engine:
    def __init__(self, address: str | None) -> None:
        self.address = address


def _container(loaded: LoadedProfile, **changes: object) -> ContainerInfo:
    container = faithful_container(build_container_spec(loaded))
    return dataclasses.replace(container, **changes)  # type: ignore[arg-type]


def test_a_local_engine_is_reached_at_the_published_port(rig: Rig) -> None:  # noqa: F811
    container = _container(rig.loaded, ip_address=ELSEWHERE)
    for address in ("unix:///var/run/docker.sock", "tcp://127.0.0.1:2375", None):
        url = server_url(rig.loaded, Engine(address), container)
        assert url == server_base_url(rig.loaded.profile)


def test_a_remote_engine_is_reached_at_its_containers_own_address(rig: Rig) -> None:  # noqa: F811
    assert rig.loaded.profile.runtime.host == "127.0.0.1"
    container = _container(rig.loaded, ip_address=ELSEWHERE, gateway_address="203.0.113.1")
    assert server_url(rig.loaded, Engine(REMOTE), container) == f"http://{ELSEWHERE}:8000"


@pytest.mark.parametrize(
    ("ip", "gateway", "local", "why"),
    [
        (None, None, set(), "reports no single address"),
        ("127.0.0.1", None, set(), "this host's or no one's"),
        ("::1", None, set(), "this host's or no one's"),
        ("169.254.1.2", None, set(), "this host's or no one's"),
        ("0.0.0.0", None, set(), "this host's or no one's"),
        ("not-an-address", None, set(), "is no address"),
        (ELSEWHERE, None, {ELSEWHERE}, "this host has its address"),
        (ELSEWHERE, "203.0.113.1", {"203.0.113.1"}, "one this host is on too"),
    ],
    ids=[
        "none",
        "loopback",
        "loopback6",
        "link-local",
        "unspecified",
        "garbage",
        "ours",
        "our-net",
    ],
)
def test_a_remote_address_that_could_be_answered_here_is_refused(
    rig: Rig,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    ip: str | None,
    gateway: str | None,
    local: set[str],
    why: str,
) -> None:
    monkeypatch.setattr(reach, "is_this_hosts_address", lambda address: address in local)
    container = _container(rig.loaded, ip_address=ip, gateway_address=gateway)
    with pytest.raises(ContainerError, match="cannot be reached safely") as raised:
        server_url(rig.loaded, Engine(REMOTE), container)
    assert why in raised.value.message
    assert REMOTE in raised.value.message


def test_this_hosts_own_addresses_are_known_by_binding_them() -> None:
    assert is_this_hosts_address("127.0.0.1")
    assert not is_this_hosts_address(ELSEWHERE)


def test_sampling_from_a_remote_engine_never_asks_this_hosts_loopback_port(
    rig: Rig,  # noqa: F811
) -> None:
    """The rig's fake server listens on this host's 127.0.0.1 at the profile's port, where a
    remote engine's container is published on the remote host: it must get nothing."""
    rig.engine.address = REMOTE  # type: ignore[attr-defined]
    error = rig.fails(ContainerError, EXIT_ENVIRONMENT)
    assert "cannot be reached safely" in error.message
    assert rig.fake.completions == []


def test_the_same_rig_samples_from_a_local_engine(rig: Rig) -> None:  # noqa: F811
    rig.engine.address = "unix:///var/run/docker.sock"  # type: ignore[attr-defined]
    assert rig.sample().n_samples > 0


def test_status_of_a_remote_container_that_cannot_be_reached_says_so(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
) -> None:
    rig.engine.address = REMOTE  # type: ignore[attr-defined]
    shown = status(rig.loaded, engine=rig.engine)  # type: ignore[arg-type]
    assert shown.health.startswith("unreachable: ")
    assert rig.fake.completions == []
