"""Where this host reaches the bound container's server: one answer for every command.

An engine on this host (a Unix socket, a named pipe, TCP to loopback:
:func:`~detserve.runtime.docker_host.engine_on_this_host`) publishes the container's port on
this host, at the profile's ``runtime.host:runtime.port``: that address is used, as it always
was.

A remote engine (``ssh://``, ``tcp://`` to another host) publishes the port on *its* host. Its
``127.0.0.1:8000`` is not this host's, where anything else (another container of a local engine,
any process) may listen and would answer for the bound container, whose binding was checked
over there. So a remote engine's container is reached at its own address, the one the engine
reports for the very container that was bound (as the gateway does where it can), and never
through a port of this host; and that address is refused when it cannot be the remote
container's for certain:

* the engine reports none (host networking, several networks): nothing to aim at;
* a loopback, unspecified or link-local address: this host's own, or no one's;
* an address this host has itself, or one in a network this host is on too (the container's
  network gateway is an address of this host): a local container or process could hold it.

A cluster's head on its host's network (``cluster.network: host``) has no address of its own:
its server listens on the profile's ``runtime.host:runtime.port`` of the head's host. On a remote
head engine that address is used only when it cannot be this host's: an IP address, not
loopback, unspecified or link-local, and not one this host has.

Each refusal is a :class:`~detserve.errors.ContainerError` (exit 3) naming the container, the
engine and the address. Whether a remote container's address is routed to from here is the
operator's network; a route that leads nowhere is a server that does not answer (exit 3).
"""

from __future__ import annotations

import ipaddress
import socket

from detserve.errors import ContainerError
from detserve.profile import LoadedProfile
from detserve.runtime.container_spec import CONTAINER_PORT, server_base_url
from detserve.runtime.docker_host import engine_on_this_host
from detserve.runtime.inspection import ContainerInfo


def engine_address(engine: object) -> str | None:
    """The engine's address (``DockerEngine.address``), or None for one that names none."""
    address = getattr(engine, "address", None)
    return address if isinstance(address, str) else None


def is_this_hosts_address(address: str) -> bool:
    """Whether this host has ``address`` on one of its interfaces (it can bind a socket to it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def url_of(address: str, port: int = CONTAINER_PORT) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def _refuse(container: ContainerInfo, engine: str, why: str) -> ContainerError:
    return ContainerError(
        f"container {container.name} runs on the remote engine {engine}: it cannot be reached "
        f"safely from this host: {why}",
        hint="a remote engine's container is reached at its own address (never through a port "
        "of this host): give it a network routed to from here, or run detserve on the engine's "
        "host",
    )


def remote_container_url(container: ContainerInfo, engine: str) -> str:
    """The URL of ``container``'s server on a remote engine: its own address; refused when that
    address could be answered by something on this host."""
    if container.ip_address is None:
        raise _refuse(container, engine, "the engine reports no single address for it")
    try:
        address = ipaddress.ip_address(container.ip_address)
    except ValueError:
        raise _refuse(container, engine, f"{container.ip_address!r} is no address") from None
    if address.is_loopback or address.is_unspecified or address.is_link_local:
        raise _refuse(container, engine, f"its address {address} is this host's or no one's")
    if is_this_hosts_address(str(address)):
        raise _refuse(container, engine, f"this host has its address {address} itself")
    gateway = container.gateway_address
    if gateway is not None and is_this_hosts_address(gateway):
        raise _refuse(
            container,
            engine,
            f"its network (gateway {gateway}) is one this host is on too: a container of this "
            f"host could hold {address}",
        )
    return url_of(str(address))


def remote_host_network_url(loaded: LoadedProfile, container: ContainerInfo, engine: str) -> str:
    """The URL of a cluster head's server on the network of its remote host: the profile's
    ``runtime.host:runtime.port`` there; refused when that address could be this host's."""
    runtime = loaded.profile.runtime
    try:
        address = ipaddress.ip_address(runtime.host)
    except ValueError:
        raise _refuse(
            container, engine, f"runtime.host {runtime.host!r} on its host's network is no address"
        ) from None
    if address.is_loopback or address.is_unspecified or address.is_link_local:
        raise _refuse(
            container,
            engine,
            f"it serves on its host's network at runtime.host {address}, this host's or no one's",
        )
    if is_this_hosts_address(str(address)):
        raise _refuse(container, engine, f"this host has runtime.host {address} itself")
    return url_of(str(address), runtime.port)


def server_url(loaded: LoadedProfile, engine: object, container: ContainerInfo) -> str:
    """Where to send requests for the bound, running ``container`` of ``loaded`` on ``engine``:
    the profile's published address for an engine on this host, else the container's own (for
    a cluster's head on its host's network: ``runtime.host`` of that host)."""
    address = engine_address(engine)
    if engine_on_this_host(address):
        return server_base_url(loaded.profile)
    assert address is not None  # an engine that names none is taken as this host's
    cluster = loaded.profile.cluster
    if cluster is not None and cluster.network == "host":
        return remote_host_network_url(loaded, container, address)
    return remote_container_url(container, address)
