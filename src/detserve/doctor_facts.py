"""What ``detserve doctor`` looks at, gathered once (the profile's pins, the snapshot verified
against its manifest, this host's clock and GPUs, what the engine says), and the shape of one
line of its checklist (:class:`CheckItem`).

:func:`gather_facts` turns every failure into a fact, never an exception, so that each item of
the checklist (:mod:`detserve.doctor_checks`) can say what it could not see. The running
container is compared with the pins by the binding itself
(:func:`~detserve.runtime.binding.binding_mismatches`, what ``sample`` refuses a container
for), with the manifest the doctor just verified.

The host half (``--host-only``: ``connect`` is None) asks no engine and imports nothing of the
Docker SDK: its engine facts say they were not gathered (:attr:`EngineFacts.not_run`), never that
the engine failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from detserve.errors import DetserveError, EngineError
from detserve.fingerprint import EngineVersion
from detserve.host_facts import GpuHost, read_gpu_host
from detserve.profile import LoadedProfile
from detserve.runtime.binding import binding_mismatches
from detserve.runtime.container_spec import build_container_spec
from detserve.runtime.inspection import ContainerInfo, ImageInfo
from detserve.snapshot import verify_snapshot

#: what the engine items say under --host-only
HOST_ONLY: str = "--host-only: the engine half was not run (no container engine was asked)"


Status = Literal["PASS", "FAIL", "NOT RUN"]


@dataclass(frozen=True)
class CheckItem:
    """One line of the checklist."""

    name: str
    status: Status
    detail: str
    fix: str | None

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _not_run(name: str) -> CheckItem:
    return CheckItem(name, "NOT RUN", HOST_ONLY, "run `detserve doctor` where the engine answers")


def item(name: str, problem: str | None, ok: str, fix: str) -> CheckItem:
    """PASS with ``ok`` when there is no ``problem``; else FAIL with it and the ``fix``."""
    if problem is None:
        return CheckItem(name, "PASS", ok, None)
    return CheckItem(name, "FAIL", problem, fix)


@dataclass(frozen=True)
class EngineFacts:
    """What the container engine said; ``error`` is set (and the rest empty) when it did not."""

    error: str | None = None
    #: True under --host-only: nothing was asked of any engine
    not_run: bool = False
    version: str | None = None
    #: the pinned image, present locally by digest; None when absent
    image: ImageInfo | None = None
    image_created: datetime | None = None
    clock: datetime | None = None
    #: the profile's container, running or not
    container: ContainerInfo | None = None
    #: how the running container differs from the pins (the binding's lines; () when it is
    #: bound); None when no container runs or it could not be compared (``binding_problem``)
    binding: tuple[str, ...] | None = None
    binding_problem: str | None = None


@dataclass(frozen=True)
class DoctorFacts:
    """Everything the checklist looks at, gathered once."""

    host_clock: datetime
    engine: EngineFacts
    missing_pins: tuple[str, ...] = ()
    #: None when the snapshot verified against its manifest; else what went wrong
    manifest_problem: str | None = None
    manifest_sha256: str | None = None
    #: the image's environment, when the image is present
    image_environment: Mapping[str, str] = field(default_factory=dict)
    #: this host's NVIDIA GPUs (:mod:`detserve.host_facts`)
    gpu: GpuHost = field(default_factory=lambda: GpuHost(None, None, None, "not read"))


class DoctorEngine(Protocol):
    """What the doctor asks of the engine (:class:`~detserve.runtime.probe.DockerProbe`)."""

    def engine_version(self) -> EngineVersion: ...

    def engine_time(self) -> datetime | None: ...

    def local_image(self, image: str) -> ImageInfo | None: ...

    def image_created(self, image: str) -> datetime | None: ...

    def container(self, loaded: LoadedProfile) -> ContainerInfo | None: ...

    def image_by_id(self, image_id: str) -> ImageInfo: ...


def _binding(
    loaded: LoadedProfile,
    engine: DoctorEngine,
    container: ContainerInfo | None,
    manifest_sha256: str | None,
) -> tuple[tuple[str, ...] | None, str | None]:
    if container is None or not container.running:
        return None, None
    if manifest_sha256 is None:
        return None, "the manifest did not verify: the container cannot be compared with it"
    spec = build_container_spec(loaded, manifest=manifest_sha256)
    try:
        image = engine.image_by_id(container.image_id)
    except DetserveError as exc:
        return (f"image id: {exc.message}",), None
    return tuple(binding_mismatches(spec, image, container)), None


def _engine_facts(
    loaded: LoadedProfile, connect: Callable[[], DoctorEngine], manifest_sha256: str | None
) -> EngineFacts:
    try:
        engine = connect()
        version = engine.engine_version().version
        clock = engine.engine_time()
        image = created = container = None
        binding: tuple[str, ...] | None = None
        problem: str | None = None
        if not loaded.missing_pins():
            image = engine.local_image(loaded.image)
            created = engine.image_created(loaded.image) if image is not None else None
            container = engine.container(loaded)
            binding, problem = _binding(loaded, engine, container, manifest_sha256)
    except EngineError as exc:
        return EngineFacts(error=exc.message)
    return EngineFacts(
        version=version,
        image=image,
        image_created=created,
        clock=clock,
        container=container,
        binding=binding,
        binding_problem=problem,
    )


def gather_facts(
    loaded: LoadedProfile,
    connect: Callable[[], DoctorEngine] | None,
    *,
    gpu: Callable[[], GpuHost] = read_gpu_host,
) -> DoctorFacts:
    """Verify the snapshot, read this host, and ask the engine (none when ``connect`` is None:
    the host half only); failures become facts, never exceptions."""
    missing = tuple(loaded.missing_pins())
    problem: str | None = "needs model.revision to find the manifest"
    manifest_sha256 = None
    if "model.revision" not in missing:
        try:
            report = verify_snapshot(loaded.snapshot_dir, loaded.manifest_path)
            problem, manifest_sha256 = None, report.manifest_sha256
        except DetserveError as exc:
            problem = "; ".join([exc.message, *exc.details[:5]])
    engine = (
        EngineFacts(not_run=True)
        if connect is None
        else _engine_facts(loaded, connect, manifest_sha256)
    )
    return DoctorFacts(
        host_clock=datetime.now(UTC),
        engine=engine,
        missing_pins=missing,
        manifest_problem=problem,
        manifest_sha256=manifest_sha256,
        image_environment=dict(engine.image.environment) if engine.image is not None else {},
        gpu=gpu(),
    )
