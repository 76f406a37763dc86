"""Profiles: the pinned description of one serving set-up (``configs/<name>.json``).

A profile is loaded into frozen pydantic models that refuse unknown keys. Pins are either a full
value (a 40-hex commit, an image digest reference) or ``null`` while not yet locked; a branch,
tag or short hash in a pin field is always refused. Commands that need the pins call
:meth:`LoadedProfile.require_pins`, which fails closed naming every missing pin.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from detserve.canonical import MAX_EXACT_INTEGER, canonical_bytes, canonical_json, duplicate_keys
from detserve.cluster_profile import ClusterSpec, check_cluster_fits
from detserve.engine_policy import (
    batch_invariant_problem,
    check_engine_option,
    check_entrypoint,
    check_environment_variable,
    installs_packages,
)
from detserve.errors import ProfileError, UnpinnedError
from detserve.field_errors import format_validation_error
from detserve.fileio import MAX_PROFILE_BYTES, read_input
from detserve.imageref import is_digest_ref
from detserve.profile_prompts import PromptsSpec
from detserve.strict_model import StrictModel

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
SECRET_NAME_RE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|PRIVATE_KEY)", re.I)
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ModelSpec(StrictModel):
    id: str
    """Hugging Face model id, ``ORG/NAME``."""

    ref: str = "main"
    """The branch or tag that ``detserve lock-model`` resolves to a commit. Never used to serve."""

    revision: str | None
    """The pinned 40-hex commit of the model repository, or null until ``lock-model`` fills it."""

    @field_validator("id")
    @classmethod
    def _model_id(cls, value: str) -> str:
        if not MODEL_ID_RE.fullmatch(value):
            raise ValueError(f"expected a Hugging Face model id 'ORG/NAME', found {value!r}")
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        if value is not None and not COMMIT_RE.fullmatch(value):
            raise ValueError(
                f"expected a full 40-hex commit id, found {value!r}; a branch, tag or short hash "
                "is refused (put it in model.ref and run `detserve lock-model --write`)"
            )
        return value


class SnapshotSpec(StrictModel):
    hf_home: str
    """Hugging Face home holding ``hub/models--ORG--NAME/snapshots/REVISION/``; a relative path is
    relative to the profile file's directory. Mounted read-only into the container."""

    manifest_dir: str = "../manifests"
    """Directory of manifests, ``<manifest_dir>/<profile name>/<revision>.sha256``; relative to the
    profile file's directory."""


#: where vLLM's CPU processes run (detserve.runtime.placement)
CpuPlacement = Literal["engine-core-with-worker", "engine-core-with-worker-when-concurrent"]


class RuntimeSpec(StrictModel):
    image_tag: str
    """The image tag ``detserve lock-image`` resolves to a digest. Never used to run."""

    image: str | None
    """The pinned image, ``REPO@sha256:<64 hex>``, or null until ``lock-image`` fills it."""

    device: Literal["cpu", "nvidia"]
    """Where the engine runs."""

    gpu_count: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Number of GPUs to request (nvidia only); exclusive with ``gpu_ids``."""

    gpu_ids: list[str] | None = None
    """GPU ids or UUIDs to request (nvidia only); exclusive with ``gpu_count``."""

    shm_size: str = "1g"
    """Shared memory size for the container (``/dev/shm``), e.g. ``1g`` or ``64g``."""

    ipc_mode: Literal["private", "shareable", "host"] | None = None
    """Container IPC mode; tensor parallelism across GPUs usually needs ``host``."""

    host: str = "127.0.0.1"
    """Host address the server port is published on; loopback unless the profile says otherwise."""

    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    """Host port the server is published on."""

    environment: dict[str, str] = Field(default_factory=dict)
    """Non-secret environment for the container, from an allowlist of names (``detserve config
    options`` lists them). Secrets come from ``--secrets-file`` only."""

    entrypoint: list[str] | None = None
    """Override of the image's entrypoint: ``[PYTHON, "-m", "vllm.entrypoints.openai.api_server"]``
    only, or null for the image's own."""

    startup_timeout_s: Annotated[int, Field(ge=10, le=7200)] = 600
    """How long ``wait`` allows the server to become ready."""

    cpu_placement: CpuPlacement | None = None
    """CPU only: ``engine-core-with-worker``: once the server is ready, ``detserve run`` moves
    vLLM's engine core onto the worker's cores and the API server onto the others, so that the
    engine core's spinning never takes the API server's core (detserve.runtime.placement).
    ``engine-core-with-worker-when-concurrent``: the same, applied by each command that keeps
    more than one request in flight and released by those that keep one. Decides where, never
    what, is computed; null leaves placement to the kernel."""

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and not is_digest_ref(value):
            raise ValueError(
                f"expected 'REPO@sha256:<64 hex>', found {value!r}; a tag alone is refused "
                "(put it in runtime.image_tag and run `detserve lock-image --write`)"
            )
        return value

    @field_validator("shm_size")
    @classmethod
    def _shm_size(cls, value: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]*[bkmg]?", value):
            raise ValueError(f"expected a size like '1g' or '512m', found {value!r}")
        return value

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        for name, setting in value.items():
            if not ENV_NAME_RE.fullmatch(name):
                raise ValueError(f"invalid environment variable name {name[:64]!r}")
            if SECRET_NAME_RE.search(name):
                raise ValueError(
                    f"{name!r} looks like a secret; put secrets in a --secrets-file, never in a "
                    "profile (profiles are committed and hashed into labels)"
                )
            problem = check_environment_variable(name, setting)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if installs_packages(value):
                raise ValueError(
                    "the entrypoint installs packages at container start; everything the server "
                    "runs must be in the pinned image"
                )
            problem = check_entrypoint(value)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _gpus(self) -> RuntimeSpec:
        if self.device == "cpu" and (self.gpu_count is not None or self.gpu_ids is not None):
            raise ValueError("gpu_count and gpu_ids are for device 'nvidia' only")
        if self.device == "nvidia" and (self.gpu_count is None) == (self.gpu_ids is None):
            raise ValueError("device 'nvidia' needs exactly one of gpu_count or gpu_ids")
        if self.device != "cpu" and self.cpu_placement is not None:
            raise ValueError("cpu_placement is for device 'cpu' only (vLLM's CPU backend)")
        return self

    def gpus_requested(self) -> int:
        if self.gpu_ids is not None:
            return len(self.gpu_ids)
        return self.gpu_count or 0


ExtraValue = str | int | float | bool


class StructuredOutputsSpec(StrictModel):
    """The structured-output (guided decoding) engine, pinned: detserve passes it as
    ``--structured-outputs-config`` (canonical JSON of these fields)."""

    backend: Literal["xgrammar", "guidance", "outlines"]
    """The backend that compiles every constraint. vLLM's default, ``auto``, picks one per
    request by what it supports, so the masks (and the tokens) would depend on the request:
    refused, as is an unset backend when a bundle holds constraints."""

    disable_any_whitespace: bool = False
    """JSON outputs without free whitespace between tokens (vLLM's option of the same name)."""

    def engine_value(self) -> str:
        return canonical_json(self.model_dump())


class VllmSpec(StrictModel):
    served_model_name: str
    """The name the server answers to; checked against ``/v1/models`` before sampling."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"]
    """Weight and activation dtype; explicit, because 'auto' depends on the hardware."""

    max_model_len: Annotated[int, Field(ge=16, le=MAX_EXACT_INTEGER)]
    """Maximum context length (prompt plus output tokens)."""

    tensor_parallel_size: Annotated[int, Field(ge=1, le=1024)] = 1
    """Tensor parallel degree; must not exceed the GPUs requested."""

    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    """Fraction of GPU memory for the engine (GPU only)."""

    max_num_seqs: Annotated[int, Field(ge=1, le=MAX_EXACT_INTEGER)] | None = None
    """Maximum sequences per batch."""

    enforce_eager: bool = False
    """Disable CUDA graphs."""

    batch_invariant: bool = False
    """vLLM's batch-invariant mode (NVIDIA): ``VLLM_BATCH_INVARIANT=1`` and what it needs
    (``engine_policy.BATCH_INVARIANT_ENVIRONMENT``); unsupported attention backends refused."""

    structured_outputs: StructuredOutputsSpec | None = None
    """The pinned structured-output backend; required to sample a bundle with constraints."""

    extra_args: dict[str, ExtraValue] = Field(default_factory=dict)
    """Further engine options, ``{"--option": value}``, by their exact names in vLLM's parser;
    ``true`` is a bare flag. Only options on detserve's allowlist pass (``detserve config
    options`` lists them, with why each is safe to pin); abbreviations are refused."""

    @field_validator("extra_args")
    @classmethod
    def _extra_args(cls, value: dict[str, ExtraValue]) -> dict[str, ExtraValue]:
        for name, arg in value.items():
            problem = check_engine_option(name, arg)
            if problem:
                raise ValueError(problem)
        return value


class SamplingSpec(StrictModel):
    temperature: float = 0.0
    """Must be 0: greedy decoding is the only strict mode."""

    seed: Annotated[int, Field(ge=0, le=MAX_EXACT_INTEGER)]
    """Fixed seed passed to the engine (``--seed``) and to every request; at most 2**53 - 1, the
    largest integer a run log (RFC 8785) holds exactly."""

    concurrency: int = 1
    """Must be 1: one request in flight, so no batch is shared between prompts."""

    max_tokens: Annotated[int, Field(ge=1, le=65536)]
    """Default maximum output tokens per prompt."""

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float) -> float:
        if value != 0:
            raise ValueError(f"expected 0 (greedy decoding), found {value!r}")
        return value

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"expected 1 (one request in flight), found {value!r}")
        return value


class Profile(StrictModel):
    schema_version: Literal[1]
    """Version of the profile format."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    """Profile name; names its manifest directory and its container."""

    description: str = ""
    """Free text for people."""

    model: ModelSpec
    snapshot: SnapshotSpec
    runtime: RuntimeSpec
    vllm: VllmSpec
    sampling: SamplingSpec
    prompts: PromptsSpec | None = None
    """The prompt bundle this profile samples and its pin; null until one is bootstrapped."""
    cluster: ClusterSpec | None = Field(default=None, exclude_if=lambda value: value is None)
    """Several Docker engines serving together (:mod:`detserve.cluster_profile`); absent for one."""

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.runtime.device == "cpu":
            if self.vllm.tensor_parallel_size != 1:
                raise ValueError("vllm.tensor_parallel_size must be 1 on device 'cpu'")
            if self.vllm.gpu_memory_utilization is not None:
                raise ValueError("vllm.gpu_memory_utilization is for device 'nvidia' only")
            if self.vllm.batch_invariant:
                raise ValueError("vllm.batch_invariant is vLLM's GPU mode; device 'cpu' has none")
        elif self.vllm.tensor_parallel_size > self.runtime.gpus_requested():
            raise ValueError(
                f"vllm.tensor_parallel_size {self.vllm.tensor_parallel_size} exceeds the "
                f"{self.runtime.gpus_requested()} GPU(s) requested by runtime"
            )
        problem = self.vllm.batch_invariant and batch_invariant_problem(
            self.runtime.environment, self.vllm.extra_args
        )
        if problem:
            raise ValueError(problem)
        check_cluster_fits(self.cluster, self)
        return self


PinName = Literal["model.revision", "runtime.image"]
ALL_PINS: tuple[PinName, ...] = ("model.revision", "runtime.image")

#: every container detserve starts is named this and the profile's name
CONTAINER_NAME_PREFIX = "detserve-"


def container_name(profile: Profile) -> str:
    """The name of the profile's container (what ``docker ps`` shows)."""
    return CONTAINER_NAME_PREFIX + profile.name


@dataclass(frozen=True)
class LoadedProfile:
    """A validated profile and where it came from."""

    profile: Profile
    path: Path
    file_sha256: str

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def container_name(self) -> str:
        """The name of the profile's container (what ``docker ps`` shows)."""
        return container_name(self.profile)

    @property
    def content_sha256(self) -> str:
        """Hash of the profile's canonical JSON, less ``prompts`` (files, not server inputs): the
        same for any formatting of the same profile, and the container's binding label."""
        served = self.profile.model_dump(mode="json", exclude={"prompts"})
        return hashlib.sha256(canonical_bytes(served)).hexdigest()

    def resolve_path(self, value: str) -> Path:
        """A path the profile names, relative to the profile file's directory."""
        candidate = Path(value)
        if not candidate.is_absolute():
            candidate = self.path.parent / candidate
        return Path(candidate.resolve(strict=False))

    @property
    def hf_home(self) -> Path:
        return self.resolve_path(self.profile.snapshot.hf_home)

    @property
    def model_cache_dir(self) -> Path:
        """``hub/models--ORG--NAME`` inside the Hugging Face home."""
        return self.hf_home / "hub" / ("models--" + self.profile.model.id.replace("/", "--"))

    @property
    def snapshot_dir(self) -> Path:
        return self.model_cache_dir / "snapshots" / self.revision

    @property
    def manifest_path(self) -> Path:
        return (
            self.resolve_path(self.profile.snapshot.manifest_dir)
            / self.profile.name
            / f"{self.revision}.sha256"
        )

    @property
    def revision(self) -> str:
        self.require_pins(("model.revision",))
        assert self.profile.model.revision is not None
        return self.profile.model.revision

    @property
    def image(self) -> str:
        self.require_pins(("runtime.image",))
        assert self.profile.runtime.image is not None
        return self.profile.runtime.image

    def missing_pins(self, pins: tuple[PinName, ...] = ALL_PINS) -> list[PinName]:
        values = {
            "model.revision": self.profile.model.revision,
            "runtime.image": self.profile.runtime.image,
        }
        return [pin for pin in pins if values[pin] is None]

    def require_pins(self, pins: tuple[PinName, ...] = ALL_PINS) -> None:
        """Fail closed unless every named pin is filled in."""
        missing = self.missing_pins(pins)
        if missing:
            commands = {
                "model.revision": "detserve lock-model --config {p} --write",
                "runtime.image": "detserve lock-image --config {p} --write",
            }
            raise UnpinnedError(
                f"profile {self.path} is not pinned: {', '.join(missing)}",
                details=[
                    f"{pin}: null (unpinned); resolve it with " + commands[pin].format(p=self.path)
                    for pin in missing
                ],
                hint="detserve never pins anything by itself; review and commit the lock.",
            )


def parse_profile(data: bytes, *, source: str) -> Profile:
    duplicates = duplicate_keys(data)
    if duplicates:
        raise ProfileError(
            f"invalid profile {source}",
            details=[f"{key}: duplicate key (ambiguous; keep one)" for key in duplicates],
        )
    try:
        return Profile.model_validate_json(data)
    except ValidationError as exc:
        raise ProfileError(
            f"invalid profile {source}",
            details=format_validation_error(exc),
            hint="`detserve config schema` prints the expected structure",
        ) from exc


def load_profile(path: Path | str | LoadedProfile) -> LoadedProfile:
    """Load and validate a profile (one already loaded is returned as it is). Pins may still be
    null (see ``require_pins``)."""
    if isinstance(path, LoadedProfile):
        return path
    path = Path(path)
    data = read_input(path, what="profile", cap=MAX_PROFILE_BYTES, error=ProfileError)
    profile = parse_profile(data, source=str(path))
    return LoadedProfile(profile=profile, path=path, file_sha256=hashlib.sha256(data).hexdigest())


def profile_json_schema() -> dict[str, object]:
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://detserve.invalid/schemas/profile.schema.json"
    return schema
