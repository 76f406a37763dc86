"""Is this running container the verified one? The single answer, for every command.

A claim names the pins; the server must have used exactly those. Labels alone cannot say so: two
profiles with the same content in two directories carry the same labels and mount different
snapshots, and a container made by other means (compose, the docker CLI) can carry any label. So
a running container is compared, field by field, with the container the pins produce
(:func:`~detserve.runtime.container_spec.build_container_spec`):

* its pin labels, its image reference, and the id of the image it runs, whose ``RepoDigests``
  must include the pinned digest;
* its command (the engine arguments) and entrypoint (the profile's, or the image's own);
* its environment: the image's, overlaid with exactly the profile's and detserve's variables;
  any other variable must be a secret's (a name :data:`~detserve.profile.SECRET_NAME_RE`
  matches), whose value is never compared or shown;
* its mounts: exactly the read-only binds of the snapshot and its blobs, from the very host
  directories that were verified (resolved paths), and nothing else;
* its published ports, its GPU requests, and the host settings that could hand it anything
  else (privileged mode, devices, volumes of other containers, tmpfs, added capabilities, the
  host's PID namespace or network).

Every difference is listed, sorted by field; any one of them means the container is not the
verified one and nothing is sampled, smoked or waited on from it.

The engine arguments are compared word for word, which is stricter than any reading of them.
What the server itself would make of a command that differs (``doctor`` says it) is
:func:`server_option`: vLLM's parser is Python's argparse, which takes ``--opt value`` and
``--opt=value``, expands an unambiguous prefix of an option name, and keeps the last occurrence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from detserve.engine_policy import ENGINE_OPTIONS, MANAGED_OPTIONS, NONDETERMINISTIC_OPTIONS
from detserve.errors import ContainerError, DetserveError, PinMismatch
from detserve.profile import SECRET_NAME_RE, LoadedProfile
from detserve.runtime.container_spec import (
    ContainerSpec,
    build_container_spec,
    label_mismatches,
    manifest_sha256,
)
from detserve.runtime.inspection import (
    ContainerInfo,
    DeviceRequestInfo,
    ImageInfo,
    MountInfo,
    is_pinned_image,
    repo_digests_shown,
)

if TYPE_CHECKING:
    # a protocol, for annotations only: the binding itself runs without the Docker SDK
    from detserve.runtime.docker_engine import ContainerEngine

#: values longer than this are shown cut, with their length
_SHOWN_CHARS = 200
#: the network modes of a container that has its own network namespace
_OWN_NETWORK = frozenset({"default", "bridge", ""})
#: the IPC modes a container gets when the profile asks for none
_DEFAULT_IPC = frozenset({"", "private", "shareable"})

_SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def shm_bytes(size: str) -> int:
    """``1g`` -> 1073741824, as the engine stores a container's shm size."""
    unit = size[-1]
    if unit in _SIZE_UNITS:
        return int(size[:-1]) * _SIZE_UNITS[unit]
    return int(size)


def _shown(value: object) -> str:
    text = str(value)
    if len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"
    return text


def _expected_devices(spec: ContainerSpec) -> tuple[DeviceRequestInfo, ...]:
    return tuple(
        DeviceRequestInfo(
            driver=str(request["Driver"]),
            count=int(request.get("Count") or 0),
            device_ids=tuple(request.get("DeviceIDs") or ()),
            capabilities=tuple(tuple(caps) for caps in request.get("Capabilities") or ()),
        )
        for request in spec.device_requests()
    )


def _environment_mismatches(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    lines = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            lines.append(f"environment {name}: expected {_shown(expected[name])}, absent")
        elif name not in expected:
            if not SECRET_NAME_RE.search(name):
                lines.append(
                    f"environment {name}: not set by the pins, found {_shown(actual[name])}"
                )
        elif actual[name] != expected[name]:
            lines.append(
                f"environment {name}: expected {_shown(expected[name])}, "
                f"found {_shown(actual[name])}"
            )
    return lines


def _mount_mismatches(spec: ContainerSpec, actual: tuple[MountInfo, ...]) -> list[str]:
    expected = {
        MountInfo(type="bind", source=str(m.source), destination=m.target, read_only=True)
        for m in spec.mounts
    }
    found = set(actual)
    lines = [
        f"mount {m.destination}: expected a read-only bind of {m.source}, absent"
        for m in sorted(expected - found)
    ]
    lines += [
        f"mount {m.destination}: not one of the pins' mounts: {m.type} of {m.source or '(none)'}"
        f"{' (read-only)' if m.read_only else ' (read-write)'}"
        for m in sorted(found - expected)
    ]
    return lines


@dataclass(frozen=True)
class OptionReading:
    """What the server's parser makes of one option in a command."""

    #: each word that sets it, as written (``--seed``, ``--see=3``, ``--no-enable-prefix-cach``)
    spellings: tuple[str, ...]
    #: the value the last occurrence gives (None for a flag, or when no value follows)
    value: str | None

    @property
    def found(self) -> bool:
        return bool(self.spellings)

    @property
    def abbreviated(self) -> bool:
        return any(word.partition("=")[0] not in _KNOWN_OPTIONS for word in self.spellings)


#: option names the server surely has (exact names of vLLM 0.32's parser): a word spelling one of
#: them exactly is that option, never an abbreviation of another (argparse matches exact first)
_KNOWN_OPTIONS = frozenset(
    {*NONDETERMINISTIC_OPTIONS, *MANAGED_OPTIONS, *ENGINE_OPTIONS, "--enable-prefix-caching"}
)


def _names(word: str, option: str) -> bool:
    """Whether ``word`` (an option word, without ``=value``) may name ``option`` for argparse:
    exactly, or as a prefix that is no other option's exact name. A prefix more than one option
    shares makes argparse refuse to start; counting it is the cautious reading either way."""
    if word == option:
        return True
    return len(word) > 2 and option.startswith(word) and word not in _KNOWN_OPTIONS


def server_option(args: Sequence[str], option: str, *, takes_value: bool = True) -> OptionReading:
    """How the server's parser reads ``option`` in ``args``: every word that may set it (an
    abbreviation included) and the value of the last one, which is the one argparse keeps."""
    spellings: list[str] = []
    value: str | None = None
    for index, word in enumerate(args):
        if not word.startswith("--"):
            continue
        name, separator, given = word.partition("=")
        if not _names(name, option):
            continue
        spellings.append(word)
        if not takes_value:
            value = None
        elif separator:
            value = given
        else:
            following = args[index + 1] if index + 1 < len(args) else None
            value = following if following is not None and not following.startswith("--") else None
    return OptionReading(tuple(spellings), value)


def prefix_caching_enabled(args: Sequence[str]) -> bool:
    """Whether a server started with ``args`` may cache prefixes: vLLM does unless the last word
    naming ``--enable-prefix-caching`` or ``--no-enable-prefix-caching`` is the ``--no-`` one,
    spelled in full (the cautious reading of an abbreviation is that caching stays on)."""
    last: bool | None = None
    for word in args:
        name = word.partition("=")[0]
        if name == "--no-enable-prefix-caching":
            last = False
        elif _names(name, "--enable-prefix-caching") or _names(name, "--no-enable-prefix-caching"):
            # an abbreviated --no- form may be another option's prefix: read as not turned off
            last = True
    return last is not False


def engine_args_mismatch(spec: ContainerSpec, container: ContainerInfo) -> str | None:
    """The binding's engine-arguments line: None when ``container`` runs exactly the pins'."""
    if tuple(container.command) == spec.command:
        return None
    return f"engine args: expected {' '.join(spec.command)}, found {' '.join(container.command)}"


def binding_mismatches(
    spec: ContainerSpec, image: ImageInfo, container: ContainerInfo
) -> list[str]:
    """Every way ``container`` differs from the container ``spec`` describes, sorted by field.

    ``image`` is the local image the container runs (looked up by the container's image id).
    """
    lines = label_mismatches(spec.labels, container.labels)
    if container.image != spec.image:
        lines.append(f"image: expected {spec.image}, found {container.image or '(none)'}")
    if container.image_id != image.id:
        lines.append(f"image id: expected {image.id}, found {container.image_id or '(none)'}")
    if not is_pinned_image(spec.image, image):
        lines.append(f"image id: {image.id} is not the pinned image; {repo_digests_shown(image)}")
    args = engine_args_mismatch(spec, container)
    if args is not None:
        lines.append(args)
    config = container.config
    if config is None:
        return [*lines, "configuration: the engine did not report how the container was created"]
    entrypoint = spec.entrypoint if spec.entrypoint is not None else image.entrypoint
    if config.entrypoint != entrypoint:
        lines.append(
            f"entrypoint: expected {list(entrypoint or ())}, found {list(config.entrypoint or ())}"
        )
    lines += _environment_mismatches({**image.environment, **spec.environment}, config.environment)
    lines += _mount_mismatches(spec, config.mounts)
    ports = spec.expected_ports()
    if dict(config.port_bindings) != ports:
        lines.append(f"published ports: expected {ports}, found {dict(config.port_bindings)}")
    devices = _expected_devices(spec)
    if config.device_requests != devices:
        lines.append(
            f"device requests: expected {list(devices) or 'none'}, "
            f"found {list(config.device_requests) or 'none'}"
        )
    if config.privileged:
        lines.append("privileged: expected false, found true")
    for what, value in (
        ("devices", config.devices),
        ("volumes from", config.volumes_from),
        ("added capabilities", config.cap_add),
        ("tmpfs", config.tmpfs),
    ):
        if value:
            lines.append(f"{what}: expected none, found {', '.join(value)}")
    if spec.network_mode is None and config.network_mode not in _OWN_NETWORK:
        lines.append(f"network mode: expected its own network, found {config.network_mode}")
    if spec.network_mode is not None and config.network_mode != spec.network_mode:
        lines.append(
            f"network mode: expected {spec.network_mode}, found {config.network_mode or '(own)'}"
        )
    if config.extra_hosts != spec.extra_host_lines():
        lines.append(
            f"extra hosts: expected {list(spec.extra_host_lines()) or 'none'}, "
            f"found {list(config.extra_hosts) or 'none'}"
        )
    if spec.hostname is not None and config.hostname != spec.hostname:
        lines.append(f"hostname: expected {spec.hostname}, found {config.hostname or '(none)'}")
    if config.pid_mode:
        lines.append(f"pid mode: expected its own, found {config.pid_mode}")
    if spec.ipc_mode is not None and config.ipc_mode != spec.ipc_mode:
        lines.append(f"ipc mode: expected {spec.ipc_mode}, found {config.ipc_mode or '(default)'}")
    if spec.ipc_mode is None and config.ipc_mode not in _DEFAULT_IPC:
        lines.append(f"ipc mode: expected the default, found {config.ipc_mode}")
    if config.shm_size != shm_bytes(spec.shm_size):
        lines.append(
            f"shm size: expected {shm_bytes(spec.shm_size)} bytes, found {config.shm_size}"
        )
    if not config.init:
        lines.append("init: expected an init process (tini) as PID 1, found none")
    return lines


def container_mismatches(
    loaded: LoadedProfile,
    container: ContainerInfo,
    engine: ContainerEngine,
    *,
    manifest: str | None = None,
) -> list[str]:
    """How a container differs from the one ``loaded``'s pins produce (empty: it is that one).

    ``manifest``: the sha256 of the manifest the command verified (read here when not given).
    """
    spec = build_container_spec(loaded, manifest=manifest)
    try:
        image = engine.image_by_id(container.image_id)
    except ContainerError as exc:
        return [f"image id: {exc.message}"]
    return binding_mismatches(spec, image, container)


def bound_container(
    loaded: LoadedProfile, engine: ContainerEngine, *, what: str, manifest: str | None = None
) -> ContainerInfo:
    """The profile's container, created exactly as its pins say. Raise otherwise.

    ``manifest``: the sha256 of the manifest the command verified, so that the container is
    compared with those very bytes and the manifest is not read again.
    """
    if manifest is None:
        manifest = manifest_sha256(loaded)  # pins and manifest first
    name = build_container_spec(loaded, manifest=manifest).name
    container = engine.find(name)
    if container is None:
        raise ContainerError(
            f"no container {name} to {what}",
            hint=f"start it with `detserve start --config {loaded.path}`",
        )
    mismatches = container_mismatches(loaded, container, engine, manifest=manifest)
    if mismatches:
        raise PinMismatch(
            f"container {name} is not the one the pins of {loaded.path} describe; refusing to "
            f"{what} it",
            details=mismatches,
            hint=f"`detserve stop --config {loaded.path}` removes it; then start it again",
        )
    return container


#: log lines shown when a container fails
FAILURE_LOG_LINES = 30


def failure_logs(engine: ContainerEngine, container_id: str) -> list[str]:
    try:
        lines = engine.logs(container_id, FAILURE_LOG_LINES)
    except DetserveError as exc:
        return [f"(its logs could not be read: {exc.message})"]
    if not lines:
        return ["(it wrote no log lines)"]
    return [f"last {len(lines)} log lines:", *(f"| {line}" for line in lines)]


def checked_container(
    loaded: LoadedProfile, engine: ContainerEngine, *, what: str, manifest: str | None = None
) -> ContainerInfo:
    """The profile's container: created exactly as its pins say (see
    :mod:`~detserve.runtime.binding`), and running."""
    container = bound_container(loaded, engine, what=what, manifest=manifest)
    if not container.running:
        raise ContainerError(
            f"container {container.name} is {container.describe()}",
            details=failure_logs(engine, container.id),
            hint=f"`detserve run --config {loaded.path}` starts it again",
        )
    return container
