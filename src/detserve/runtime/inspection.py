"""What the engine reports about images and containers, and how ``docker inspect`` is read.

The records are plain frozen dataclasses, independent of the Docker SDK, so that
:mod:`detserve.runtime.binding` and the fakes in the tests build and compare them without an
engine. The parsers read the ``attrs`` of ``docker inspect`` leniently (a missing key is an empty
value; only a container's ``Id`` is required): what a container must hold is decided by the
binding, not by parsing. A :class:`ContainerConfig` holds the environment's values, secrets
included: it is never shown, logged or put in ``as_json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detserve.imageref import ImageRef, is_digest_ref


@dataclass(frozen=True)
class ImageInfo:
    """A local image: its id, the ``REPO@sha256`` references the engine knows it by, and the
    defaults a container of it inherits (environment, entrypoint)."""

    id: str
    repo_digests: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)
    entrypoint: tuple[str, ...] | None = None


@dataclass(frozen=True, order=True)
class MountInfo:
    """One mount of a container, as the engine reports it."""

    type: str
    source: str
    destination: str
    read_only: bool


@dataclass(frozen=True)
class DeviceRequestInfo:
    """One device request of a container (GPUs), as the engine reports it."""

    driver: str
    count: int
    device_ids: tuple[str, ...]
    capabilities: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class ContainerConfig:
    """How a container was created: everything that decides what its server runs and sees.

    :mod:`detserve.runtime.binding` compares it with what the pins produce. The environment
    holds secrets' values: it is never shown, logged or put in ``as_json``.
    """

    entrypoint: tuple[str, ...] | None
    environment: Mapping[str, str] = field(repr=False)
    mounts: tuple[MountInfo, ...]
    #: ``"8000/tcp" -> ((host ip, host port), ...)``
    port_bindings: Mapping[str, tuple[tuple[str, str], ...]]
    device_requests: tuple[DeviceRequestInfo, ...]
    privileged: bool
    devices: tuple[str, ...]
    volumes_from: tuple[str, ...]
    cap_add: tuple[str, ...]
    tmpfs: tuple[str, ...]
    network_mode: str
    ipc_mode: str
    pid_mode: str
    shm_size: int
    init: bool
    #: ``name:address`` lines the engine adds to the container's ``/etc/hosts``, sorted
    extra_hosts: tuple[str, ...] = ()
    #: the container's host name (the engine's default is its short id)
    hostname: str = ""


@dataclass(frozen=True)
class ContainerInfo:
    """What detserve needs from ``docker inspect``."""

    id: str
    name: str
    status: str
    running: bool
    started_at: str
    restart_count: int
    exit_code: int | None
    oom_killed: bool
    error: str
    image_id: str
    image: str
    labels: Mapping[str, str] = field(default_factory=dict)
    #: the arguments the server was started with (``Config.Cmd``)
    command: tuple[str, ...] = ()
    #: how it was created; None only where an engine does not say (then it binds to nothing)
    config: ContainerConfig | None = None
    #: its address on its one network (the bridge), None when it has no address or several
    ip_address: str | None = None
    #: that network's gateway (the engine host's end of the bridge), None when not one
    gateway_address: str | None = None

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def describe(self) -> str:
        """``exited (exit code 137, OOM killed)`` and the like."""
        if self.running:
            return "running"
        notes = []
        if self.exit_code is not None:
            notes.append(f"exit code {self.exit_code}")
        if self.oom_killed:
            notes.append("OOM killed")
        if self.error:
            notes.append(self.error)
        return f"{self.status} ({', '.join(notes)})" if notes else self.status

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "running": self.running,
            "started_at": self.started_at,
            "restart_count": self.restart_count,
            "exit_code": self.exit_code,
            "image_id": self.image_id,
            "image": self.image,
            "labels": dict(sorted(self.labels.items())),
            "command": list(self.command),
        }


def is_pinned_image(image: str, info: ImageInfo) -> bool:
    """Whether the local image ``info`` is the pinned ``REPO@sha256`` reference ``image``."""
    known = {ImageRef.parse(ref).normalised() for ref in info.repo_digests if is_digest_ref(ref)}
    return ImageRef.parse(image).normalised() in known


def repo_digests_shown(info: ImageInfo) -> str:
    return f"its RepoDigests: {', '.join(sorted(info.repo_digests)) or '(none)'}"


def _words(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # the engine API allows a string; Docker reports lists
        return (value,)
    return tuple(str(word) for word in value)  # type: ignore[attr-defined]


def _environment(entries: object) -> dict[str, str]:
    environment: dict[str, str] = {}
    for entry in entries or ():  # type: ignore[attr-defined]
        name, _, value = str(entry).partition("=")
        environment[name] = value
    return environment


def image_info(attrs: Mapping[str, Any]) -> ImageInfo:
    config = attrs.get("Config") or {}
    return ImageInfo(
        id=str(attrs.get("Id", "")),
        repo_digests=tuple(attrs.get("RepoDigests") or ()),
        environment=_environment(config.get("Env")),
        entrypoint=_words(config.get("Entrypoint")),
    )


def container_config(attrs: Mapping[str, Any]) -> ContainerConfig:
    """What ``docker inspect`` says about how a container was created."""
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    mounts = tuple(
        sorted(
            MountInfo(
                type=str(mount.get("Type", "")),
                source=str(mount.get("Source", "")),
                destination=str(mount.get("Destination", "")),
                read_only=not mount.get("RW", True),
            )
            for mount in attrs.get("Mounts") or ()
        )
    )
    ports = {
        str(port): tuple(
            (str(binding.get("HostIp", "")), str(binding.get("HostPort", "")))
            for binding in bindings or ()
        )
        for port, bindings in (host.get("PortBindings") or {}).items()
    }
    requests = tuple(
        DeviceRequestInfo(
            driver=str(request.get("Driver") or ""),
            count=int(request.get("Count") or 0),
            device_ids=tuple(str(i) for i in request.get("DeviceIDs") or ()),
            capabilities=tuple(
                tuple(str(c) for c in caps) for caps in request.get("Capabilities") or ()
            ),
        )
        for request in host.get("DeviceRequests") or ()
    )
    return ContainerConfig(
        entrypoint=_words(config.get("Entrypoint")),
        environment=_environment(config.get("Env")),
        mounts=mounts,
        port_bindings=ports,
        device_requests=requests,
        privileged=bool(host.get("Privileged")),
        devices=tuple(
            f"{device.get('PathOnHost')}:{device.get('PathInContainer')}"
            for device in host.get("Devices") or ()
        ),
        volumes_from=tuple(str(v) for v in host.get("VolumesFrom") or ()),
        cap_add=tuple(str(c) for c in host.get("CapAdd") or ()),
        tmpfs=tuple(sorted(str(t) for t in host.get("Tmpfs") or {})),
        network_mode=str(host.get("NetworkMode") or ""),
        ipc_mode=str(host.get("IpcMode") or ""),
        pid_mode=str(host.get("PidMode") or ""),
        shm_size=int(host.get("ShmSize") or 0),
        init=bool(host.get("Init")),
        extra_hosts=tuple(sorted(str(h) for h in host.get("ExtraHosts") or ())),
        hostname=str(config.get("Hostname") or ""),
    )


def container_info(attrs: Mapping[str, Any]) -> ContainerInfo:
    """What ``docker inspect`` says about a container: its state and how it was created."""
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    running = bool(state.get("Running")) and not state.get("Restarting")
    exit_code = state.get("ExitCode")
    return ContainerInfo(
        id=attrs["Id"],
        name=str(attrs.get("Name", "")).lstrip("/"),
        status=str(state.get("Status", "unknown")),
        running=running,
        started_at=str(state.get("StartedAt", "")),
        restart_count=int(attrs.get("RestartCount") or 0),
        exit_code=None if running or exit_code is None else int(exit_code),
        oom_killed=bool(state.get("OOMKilled")),
        error=str(state.get("Error") or ""),
        image_id=str(attrs.get("Image", "")),
        image=str(config.get("Image", "")),
        labels=dict(config.get("Labels") or {}),
        command=tuple(str(word) for word in config.get("Cmd") or ()),
        config=container_config(attrs),
        ip_address=_ip_address(attrs),
        gateway_address=_ip_address(attrs, "Gateway"),
    )


def _ip_address(attrs: Mapping[str, Any], key: str = "IPAddress") -> str | None:
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    addresses = {
        str(network.get(key))
        for network in networks.values()
        if isinstance(network, Mapping) and network.get(key)
    }
    return addresses.pop() if len(addresses) == 1 else None
