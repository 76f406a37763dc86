"""The exact container configuration sent to the engine for a pinned profile.

:func:`build_container_spec` is pure: it talks to no engine and no server, and reads one file,
the manifest, to put its hash in a label. What it returns is what ``detserve start`` sends to
``client.containers.create(**spec.to_create_kwargs())``, so the unit tests can check every
setting without a container. The Docker SDK's types are imported only to build those
arguments, so that a spec is read (by the binding, the doctor) where the SDK is absent.

The container is labelled with every pin it was started from. ``start`` reuses a running
container only when all those labels equal the ones the current profile would produce, and
``wait``, ``smoke`` and ``status`` check them again, so a container from another profile, image,
revision or manifest is never taken for the pinned one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detserve.engine_policy import BATCH_INVARIANT_ENVIRONMENT
from detserve.errors import InputError, UsageError
from detserve.imageref import ImageRef
from detserve.manifest import read_manifest_bytes
from detserve.profile import LoadedProfile, Profile, container_name
from detserve.runtime.secrets import SecretEnvironment

if TYPE_CHECKING:
    from docker.types import DeviceRequest

#: the port the server listens on inside the container
CONTAINER_PORT = 8000
#: the container's Hugging Face home; only the verified snapshot and its blobs are mounted in it
CONTAINER_HF_HOME = "/hf-home"

LABEL_PROFILE = "io.detserve.profile"
LABEL_PROFILE_SHA256 = "io.detserve.profile-sha256"
LABEL_MODEL_ID = "io.detserve.model-id"
LABEL_MODEL_REVISION = "io.detserve.model-revision"
LABEL_IMAGE = "io.detserve.image"
LABEL_MANIFEST_SHA256 = "io.detserve.manifest-sha256"
PIN_LABELS = (
    LABEL_PROFILE,
    LABEL_PROFILE_SHA256,
    LABEL_MODEL_ID,
    LABEL_MODEL_REVISION,
    LABEL_IMAGE,
    LABEL_MANIFEST_SHA256,
)


def engine_args(loaded: LoadedProfile) -> list[str]:
    """The vLLM server arguments for a profile, in a stable order (recorded in run logs).

    Structured fields first, in a fixed order, then ``vllm.extra_args`` sorted by option name
    (``true`` is a bare flag). Prefix caching is always off: it makes a request's numerics depend
    on earlier requests.
    """
    profile = loaded.profile
    vllm = profile.vllm
    args = [
        "--model",
        profile.model.id,
        "--revision",
        loaded.revision,
        "--served-model-name",
        vllm.served_model_name,
        "--dtype",
        vllm.dtype,
        "--max-model-len",
        str(vllm.max_model_len),
        "--seed",
        str(profile.sampling.seed),
        "--tensor-parallel-size",
        str(vllm.tensor_parallel_size),
        "--host",
        "0.0.0.0",  # noqa: S104 - inside the container; the host side is published on runtime.host
        "--port",
        str(CONTAINER_PORT),
        "--no-enable-prefix-caching",
    ]
    if vllm.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", repr(vllm.gpu_memory_utilization)]
    if vllm.max_num_seqs is not None:
        args += ["--max-num-seqs", str(vllm.max_num_seqs)]
    if vllm.enforce_eager:
        args.append("--enforce-eager")
    if vllm.structured_outputs is not None:
        args += ["--structured-outputs-config", vllm.structured_outputs.engine_value()]
    for option in sorted(vllm.extra_args):
        value = vllm.extra_args[option]
        if value is True:
            args.append(option)
        else:
            # bool False is refused by the profile; int and str are passed as text
            args += [option, str(value)]
    return args


def manifest_sha256(loaded: LoadedProfile) -> str:
    """sha256 of the manifest file's bytes; a missing manifest is an error (exit 2)."""
    return hashlib.sha256(read_manifest_bytes(loaded.manifest_path)).hexdigest()


def expected_labels(loaded: LoadedProfile, manifest: str | None = None) -> dict[str, str]:
    """The pin labels a container started from this profile carries (needs every pin).

    ``manifest`` is the sha256 of the manifest bytes the command already read and verified;
    without it the manifest is read here.
    """
    loaded.require_pins()
    return {
        LABEL_PROFILE: loaded.name,
        LABEL_PROFILE_SHA256: loaded.content_sha256,
        LABEL_MODEL_ID: loaded.profile.model.id,
        LABEL_MODEL_REVISION: loaded.revision,
        LABEL_IMAGE: loaded.image,
        LABEL_MANIFEST_SHA256: manifest if manifest is not None else manifest_sha256(loaded),
    }


def label_mismatches(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """One line per pin label that differs, sorted by label: ``label: expected X, found Y``."""
    lines = []
    for label in sorted(expected):
        found = actual.get(label)
        if found != expected[label]:
            shown = "(absent)" if found is None else found
            lines.append(f"{label}: expected {expected[label]}, found {shown}")
    return lines


def server_base_url(profile: Profile) -> str:
    """Where the host reaches the server: the published address, or loopback for a wildcard."""
    host = profile.runtime.host
    if host in {"0.0.0.0", ""}:  # noqa: S104 - a wildcard bind is reached through loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{profile.runtime.port}"


@dataclass(frozen=True, order=True)
class SnapshotMount:
    """One read-only bind mount of the verified snapshot: a host directory, where it appears."""

    source: Path
    target: str


def model_cache_target(profile: Profile) -> str:
    """``/hf-home/hub/models--ORG--NAME`` inside the container."""
    return f"{CONTAINER_HF_HOME}/hub/models--{profile.model.id.replace('/', '--')}"


def snapshot_mounts(loaded: LoadedProfile) -> tuple[SnapshotMount, ...]:
    """The only host paths the container sees: the pinned snapshot and the blobs it links into.

    Not the whole Hugging Face home: other models, other revisions' snapshots, ``refs/`` (which
    can map a commit to another snapshot) and ``.no_exist/`` stay out of the container's reach.
    Sources are resolved (symlinks followed) now, so the mount is the directory that was
    verified, and :mod:`detserve.runtime.binding` can compare them with a running container's.
    The blobs directory is mounted only when the model's cache has one (the layout
    huggingface_hub writes; :func:`detserve.snapshot.allowed_roots_for` lets the snapshot's links
    point there and nowhere else).
    """
    target = model_cache_target(loaded.profile)
    mounts = [
        SnapshotMount(
            source=Path(os.path.realpath(loaded.snapshot_dir)),
            target=f"{target}/snapshots/{loaded.revision}",
        )
    ]
    blobs = loaded.model_cache_dir / "blobs"
    if blobs.is_dir():
        mounts.append(SnapshotMount(source=Path(os.path.realpath(blobs)), target=f"{target}/blobs"))
    return tuple(mounts)


def container_environment(loaded: LoadedProfile) -> dict[str, str]:
    """The environment detserve gives the container, secrets aside, sorted by name.

    The profile's variables, then those ``vllm.batch_invariant`` implies (the profile refuses a
    clash), then detserve's own."""
    environment = dict(loaded.profile.runtime.environment)
    if loaded.profile.vllm.batch_invariant:
        environment.update(BATCH_INVARIANT_ENVIRONMENT)
    environment["HF_HOME"] = CONTAINER_HF_HOME
    environment["HF_HUB_OFFLINE"] = "1"
    return dict(sorted(environment.items()))


@dataclass(frozen=True)
class ContainerSpec:
    """Everything ``detserve start`` asks of the engine. The secrets' values never show."""

    name: str
    image: str
    command: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    environment: Mapping[str, str]
    mounts: tuple[SnapshotMount, ...]
    host: str
    port: int
    labels: Mapping[str, str]
    shm_size: str
    ipc_mode: str | None
    device: str
    gpu_count: int | None
    gpu_ids: tuple[str, ...] | None
    secrets: SecretEnvironment = field(default_factory=SecretEnvironment)
    #: what a cluster's node may differ in (:mod:`detserve.runtime.cluster`); one container
    #: keeps the defaults: its own network, the server published, the engine's host name
    network_mode: str | None = None
    published: bool = True
    hostname: str | None = None
    #: ``name -> address`` lines for the container's ``/etc/hosts``
    extra_hosts: Mapping[str, str] = field(default_factory=dict)

    def expected_ports(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """The published ports as the engine reports them: the server's, or none."""
        if not self.published:
            return {}
        return {f"{CONTAINER_PORT}/tcp": ((self.host, str(self.port)),)}

    def extra_host_lines(self) -> tuple[str, ...]:
        """``extra_hosts`` as the engine reports them (``name:address``), sorted."""
        return tuple(sorted(f"{name}:{address}" for name, address in self.extra_hosts.items()))

    def device_requests(self) -> list[DeviceRequest]:
        if self.device != "nvidia":
            return []
        # the Docker SDK is imported where its types are built: a host without it (the host half
        # of doctor) reads specs all the same
        from docker.types import DeviceRequest

        if self.gpu_ids is not None:
            request = DeviceRequest(
                driver="nvidia", device_ids=list(self.gpu_ids), capabilities=[["gpu"]]
            )
        else:
            request = DeviceRequest(driver="nvidia", count=self.gpu_count, capabilities=[["gpu"]])
        return [request]

    def to_create_kwargs(self) -> dict[str, Any]:
        """Exactly the keyword arguments of ``client.containers.create``.

        The result holds the secrets' values in ``environment``: hand it to the engine only,
        never log it.
        """
        from docker.types import Mount

        kwargs: dict[str, Any] = {
            "image": self.image,
            "name": self.name,
            "command": list(self.command),
            "environment": {**self.environment, **self.secrets},
            "labels": dict(self.labels),
            "mounts": [
                Mount(target=mount.target, source=str(mount.source), type="bind", read_only=True)
                for mount in self.mounts
            ],
            "shm_size": self.shm_size,
            # tini as PID 1: SIGTERM reaches the server even while it loads (a bare PID 1 ignores
            # it until a handler is installed), and the engine's child processes are reaped
            "init": True,
        }
        if self.published:
            kwargs["ports"] = {f"{CONTAINER_PORT}/tcp": (self.host, self.port)}
        if self.network_mode is not None:
            kwargs["network_mode"] = self.network_mode
        if self.hostname is not None:
            kwargs["hostname"] = self.hostname
        if self.extra_hosts:
            kwargs["extra_hosts"] = dict(self.extra_hosts)
        if self.entrypoint is not None:
            kwargs["entrypoint"] = list(self.entrypoint)
        if self.ipc_mode is not None:
            kwargs["ipc_mode"] = self.ipc_mode
        requests = self.device_requests()
        if requests:
            kwargs["device_requests"] = requests
        return kwargs


def build_container_spec(
    loaded: LoadedProfile,
    secrets: Mapping[str, str] | None = None,
    *,
    manifest: str | None = None,
    cluster_node: bool = False,
) -> ContainerSpec:
    """The container for a fully pinned profile. Reads the manifest (for its label) only, and not
    even that when ``manifest``, the sha256 of the manifest the command verified, is given.

    A cluster profile has no single container: every path of one container (start, wait, smoke,
    the binding, the gateway) refuses it here; :mod:`detserve.runtime.cluster` builds its nodes'
    containers from this one (``cluster_node``)."""
    if loaded.profile.cluster is not None and not cluster_node:
        raise UsageError(
            f"profile {loaded.path} is a cluster of {len(loaded.profile.cluster.nodes)} nodes, "
            "not one container",
            hint="`detserve run`, `status`, `stop`, `sample` and `check` take a cluster profile",
        )
    loaded.require_pins()
    profile = loaded.profile
    runtime = profile.runtime
    ImageRef.parse(loaded.image)  # the profile already refuses tags; never trust one here
    secret_env = secrets if isinstance(secrets, SecretEnvironment) else SecretEnvironment(secrets)
    clashes = sorted(set(secret_env) & set(runtime.environment))
    if clashes:
        raise InputError(
            f"secrets file sets {', '.join(clashes)}, which the profile's runtime.environment "
            "sets too; a variable comes from one place only"
        )
    return ContainerSpec(
        name=container_name(profile),
        image=loaded.image,
        command=tuple(engine_args(loaded)),
        entrypoint=tuple(runtime.entrypoint) if runtime.entrypoint is not None else None,
        environment=container_environment(loaded),
        mounts=snapshot_mounts(loaded),
        host=runtime.host,
        port=runtime.port,
        labels=expected_labels(loaded, manifest),
        shm_size=runtime.shm_size,
        ipc_mode=runtime.ipc_mode,
        device=runtime.device,
        gpu_count=runtime.gpu_count,
        gpu_ids=tuple(runtime.gpu_ids) if runtime.gpu_ids is not None else None,
        secrets=secret_env,
    )
