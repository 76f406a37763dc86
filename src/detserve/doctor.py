"""The determinism checklist: is this profile, on this host, set up to give replayable tokens?

``detserve doctor`` gathers facts once (:func:`gather_facts`: the profile's pins, a full
verification of the snapshot against its manifest, and what the engine says about the image, the
profile's container and its clock), then runs every item of :data:`CHECKS` on them. Each item is
a pure function of ``(profile, facts)`` returning a :class:`CheckItem` (name, PASS or FAIL, what
was found, and the fix), so each can be shown to fail on facts built to break it.

An item that needs what an earlier one could not give (a pin, the engine) fails too, saying so:
nothing is passed for want of checking it. Where no container runs, the container items check
what ``detserve start`` would create and say so in their detail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

from detserve.errors import DetserveError, EngineError
from detserve.fingerprint import EngineVersion, numerics_environment
from detserve.profile import LoadedProfile
from detserve.runtime.container_spec import container_environment, engine_args
from detserve.runtime.engine import ContainerInfo, ImageInfo
from detserve.snapshot import verify_snapshot

Status = Literal["PASS", "FAIL"]

#: Clocks further apart than this (host and engine) are not sane.
MAX_CLOCK_SKEW: Final = timedelta(seconds=60)
#: No sane clock reads earlier than this (before detserve existed).
CLOCK_FLOOR: Final = datetime(2025, 1, 1, tzinfo=UTC)
#: vLLM's default ``--max-num-seqs`` when the profile sets none: the server may batch.
VLLM_DEFAULT_MAX_NUM_SEQS: Final = 256


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


@dataclass(frozen=True)
class EngineFacts:
    """What the container engine said; ``error`` is set (and the rest empty) when it did not."""

    error: str | None = None
    version: str | None = None
    #: the pinned image, present locally by digest; None when absent
    image: ImageInfo | None = None
    image_created: datetime | None = None
    clock: datetime | None = None
    #: the profile's container, running or not
    container: ContainerInfo | None = None


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


class DoctorEngine(Protocol):
    """What the doctor asks of the engine (:class:`~detserve.runtime.probe.DockerProbe`)."""

    def engine_version(self) -> EngineVersion: ...

    def engine_time(self) -> datetime | None: ...

    def local_image(self, image: str) -> ImageInfo | None: ...

    def image_created(self, image: str) -> datetime | None: ...

    def container(self, loaded: LoadedProfile) -> ContainerInfo | None: ...


def _engine_facts(loaded: LoadedProfile, connect: Callable[[], DoctorEngine]) -> EngineFacts:
    try:
        engine = connect()
        version = engine.engine_version().version
        clock = engine.engine_time()
        image = created = container = None
        if not loaded.missing_pins():
            image = engine.local_image(loaded.image)
            created = engine.image_created(loaded.image) if image is not None else None
            container = engine.container(loaded)
    except EngineError as exc:
        return EngineFacts(error=exc.message)
    return EngineFacts(
        version=version,
        image=image,
        image_created=created,
        clock=clock,
        container=container,
    )


def gather_facts(loaded: LoadedProfile, connect: Callable[[], DoctorEngine]) -> DoctorFacts:
    """Verify the snapshot and ask the engine; failures become facts, never exceptions."""
    missing = tuple(loaded.missing_pins())
    problem: str | None = "needs model.revision to find the manifest"
    manifest_sha256 = None
    if "model.revision" not in missing:
        try:
            report = verify_snapshot(loaded.snapshot_dir, loaded.manifest_path)
            problem, manifest_sha256 = None, report.manifest_sha256
        except DetserveError as exc:
            problem = "; ".join([exc.message, *exc.details[:5]])
    engine = _engine_facts(loaded, connect)
    return DoctorFacts(
        host_clock=datetime.now(UTC),
        engine=engine,
        missing_pins=missing,
        manifest_problem=problem,
        manifest_sha256=manifest_sha256,
        image_environment=dict(engine.image.environment) if engine.image is not None else {},
    )


# --- the items ----------------------------------------------------------------------------------


def _item(name: str, problem: str | None, ok: str, fix: str) -> CheckItem:
    if problem is None:
        return CheckItem(name, "PASS", ok, None)
    return CheckItem(name, "FAIL", problem, fix)


def check_pins(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    missing = ", ".join(facts.missing_pins)
    return _item(
        "pins filled",
        f"unpinned: {missing}" if missing else None,
        "model.revision and runtime.image are pinned",
        f"`detserve lock-model --config {loaded.path} --write` and "
        f"`detserve lock-image --config {loaded.path} --write`, then review and commit",
    )


def check_manifest(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    return _item(
        "manifest present and verifying",
        facts.manifest_problem,
        f"the snapshot verifies against its manifest (sha256 {facts.manifest_sha256})",
        "re-download the pinned revision and `detserve verify`; a missing manifest is made only "
        "by `detserve hash` and committed by a person",
    )


def check_engine(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    return _item(
        "engine reachable",
        facts.engine.error,
        f"the Docker engine answers (version {facts.engine.version})",
        "start the engine (`systemctl start docker`) or set DOCKER_HOST",
    )


def check_image(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    if facts.missing_pins:
        problem: str | None = "runtime.image is not pinned"
    elif facts.engine.error is not None:
        problem = "the engine does not answer"
    elif facts.engine.image is None:
        problem = f"{loaded.profile.runtime.image} is not in the engine by that digest"
    else:
        problem = None
    image = facts.engine.image
    return _item(
        "image present by digest",
        problem,
        f"{loaded.profile.runtime.image} is image {image.id if image else '?'}",
        f"`detserve start --config {loaded.path}` pulls it by digest (never by tag)",
    )


def _expected_args(loaded: LoadedProfile, facts: DoctorFacts) -> list[str] | None:
    return None if facts.missing_pins else engine_args(loaded)


def _running(facts: DoctorFacts) -> ContainerInfo | None:
    container = facts.engine.container
    return container if container is not None and container.running else None


def _option_value(args: tuple[str, ...] | list[str], option: str) -> str | None:
    for index, word in enumerate(args):
        if word == option and index + 1 < len(args):
            return args[index + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


def _where(facts: DoctorFacts) -> str:
    container = _running(facts)
    return (
        f"container {container.name}"
        if container is not None
        else "what `detserve start` would create (no container runs)"
    )


def check_prefix_caching(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    expected = _expected_args(loaded, facts)
    container = _running(facts)
    args = list(container.command) if container is not None else expected
    if args is None:
        problem: str | None = "needs the pins to know the engine arguments"
    elif "--enable-prefix-caching" in args or "--no-enable-prefix-caching" not in args:
        problem = f"{_where(facts)}: prefix caching is not turned off"
    else:
        problem = None
    return _item(
        "prefix caching off",
        problem,
        f"{_where(facts)} runs with --no-enable-prefix-caching",
        f"`detserve stop --config {loaded.path}` and start again: detserve always passes "
        "--no-enable-prefix-caching",
    )


def check_seed(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    seed = str(loaded.profile.sampling.seed)
    expected = _expected_args(loaded, facts)
    container = _running(facts)
    args = list(container.command) if container is not None else expected
    found = None if args is None else _option_value(args, "--seed")
    if args is None:
        problem: str | None = "needs the pins to know the engine arguments"
    elif found != seed:
        problem = f"{_where(facts)}: --seed is {found!r}, the profile's sampling.seed is {seed}"
    else:
        problem = None
    return _item(
        "seed set",
        problem,
        f"--seed {seed} (sampling.seed), also sent with every request",
        f"restart the container from the profile: `detserve stop` then `detserve run --config "
        f"{loaded.path}`",
    )


def check_batch_invariant(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    profile = loaded.profile
    if profile.runtime.device != "nvidia":
        return CheckItem(
            "batch-invariant mode",
            "PASS",
            "not required on CPU: one request at a time, CPU kernels do not split by batch",
            None,
        )
    seqs = profile.vllm.max_num_seqs or VLLM_DEFAULT_MAX_NUM_SEQS
    concurrency = max(profile.sampling.concurrency, seqs)
    value = profile.runtime.environment.get("VLLM_BATCH_INVARIANT")
    if profile.vllm.batch_invariant:
        value = "1"  # vllm.batch_invariant sets it (the profile refuses another value)
    problem = None
    if concurrency > 1 and value != "1":
        problem = (
            f"GPU profile whose server may batch {concurrency} sequences "
            f"(vllm.max_num_seqs {profile.vllm.max_num_seqs}) without VLLM_BATCH_INVARIANT=1 "
            f"(found {value!r}): a request's tokens then depend on what shares its batch"
        )
    return _item(
        "batch-invariant mode",
        problem,
        "VLLM_BATCH_INVARIANT=1" if concurrency > 1 else "vllm.max_num_seqs 1: never batched",
        "set vllm.batch_invariant to true (or vllm.max_num_seqs to 1)",
    )


def check_numerics_environment(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    if facts.missing_pins:
        return _item("numerics environment", "needs the pins", "", "pin the profile first")
    # What the container must hold: the image's variables, overlaid with the profile's.
    expected = numerics_environment({**facts.image_environment, **container_environment(loaded)})
    problems = []
    if loaded.profile.runtime.device == "nvidia" and "CUBLAS_WORKSPACE_CONFIG" not in expected:
        problems.append(
            "GPU profile without CUBLAS_WORKSPACE_CONFIG: cuBLAS may pick workspaces, and "
            "results, per run"
        )
    container = _running(facts)
    shown = expected
    if container is not None and container.config is not None:
        actual = numerics_environment(container.config.environment)
        problems += [
            f"{name}: expected {expected.get(name)!r} (image and profile), container has "
            f"{actual.get(name)!r}"
            for name in sorted(set(expected) | set(actual))
            if actual.get(name) != expected.get(name)
        ]
        shown = actual
    settings = ", ".join(f"{name}={value}" for name, value in shown.items()) or "(none)"
    return _item(
        "numerics environment",
        "; ".join(problems) or None,
        f"{_where(facts)}: {settings}",
        "set numerics variables in runtime.environment only (`detserve config options` lists "
        "them; GPU profiles: CUBLAS_WORKSPACE_CONFIG=:4096:8), and restart the container from "
        "the profile",
    )


def check_clock(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    now = facts.host_clock
    problems = []
    if now < CLOCK_FLOOR:
        problems.append(f"the host clock reads {now.isoformat()}, before {CLOCK_FLOOR.date()}")
    created = facts.engine.image_created
    if created is not None and now < created:
        problems.append(
            f"the host clock ({now.isoformat()}) is earlier than the pinned image's build "
            f"({created.isoformat()})"
        )
    if facts.engine.error is not None:
        problems.append("the engine does not answer: its clock cannot be compared")
    elif facts.engine.clock is not None and abs(facts.engine.clock - now) > MAX_CLOCK_SKEW:
        skew = abs(facts.engine.clock - now).total_seconds()
        problems.append(f"the host and engine clocks differ by {skew:.0f} s")
    return _item(
        "host clock sane",
        "; ".join(problems) or None,
        f"{now.isoformat(timespec='seconds')}, within {MAX_CLOCK_SKEW.seconds} s of the engine's",
        "synchronise the clock (`timedatectl set-ntp true`); sidecar times and certificates "
        "rely on it",
    )


Check = Callable[[LoadedProfile, DoctorFacts], CheckItem]
#: The checklist, in the order it is shown.
CHECKS: Final[tuple[Check, ...]] = (
    check_pins,
    check_manifest,
    check_engine,
    check_image,
    check_prefix_caching,
    check_seed,
    check_batch_invariant,
    check_numerics_environment,
    check_clock,
)


@dataclass(frozen=True)
class DoctorReport:
    profile: str
    items: tuple[CheckItem, ...]

    @property
    def passed(self) -> bool:
        return all(item.passed for item in self.items)

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.passed,
            "profile": self.profile,
            "failed": sum(not item.passed for item in self.items),
            "items": [item.as_json() for item in self.items],
        }


def run_checks(loaded: LoadedProfile, facts: DoctorFacts) -> DoctorReport:
    """Every item of :data:`CHECKS` on ``facts``."""
    return DoctorReport(str(loaded.path), tuple(check(loaded, facts) for check in CHECKS))


def doctor(loaded: LoadedProfile, connect: Callable[[], DoctorEngine]) -> DoctorReport:
    """Gather the facts and run the checklist (the caller decides what a FAIL exits with)."""
    return run_checks(loaded, gather_facts(loaded, connect))
