"""The determinism checklist: is this profile, on this host, set up to give replayable tokens?

``detserve doctor`` gathers facts once (:func:`~detserve.doctor_facts.gather_facts`: the
profile's pins, a full verification of the snapshot against its manifest, this host's GPUs and
clock, and what the engine says about the image, the profile's container and its clock), then
runs every item of :data:`CHECKS` on them. Each item is a pure function of ``(profile, facts)``
returning a :class:`CheckItem` (name, PASS, FAIL or NOT RUN, what was found, and the fix), so
each can be shown to fail on facts built to break it.

An item that needs what an earlier one could not give (a pin, the engine) fails too, saying so:
nothing is passed for want of checking it. Where no container runs, the container items check
what ``detserve start`` would create and say so in their detail. A running container is judged
as ``sample`` judges it: by the binding (:mod:`detserve.runtime.binding`), and its seed and
prefix caching as the server's own parser reads its command (the last ``--seed``, an
abbreviation, ``--opt=value``), never by the first word that looks right.

Under ``--host-only`` no engine is asked: the items that need one are NOT RUN (never PASS), and
the host's own (pins, manifest, batch-invariant mode, compute capability, GPUs under a CPU
profile, the host clock) run as usual. A report with an item NOT RUN is not a pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from detserve.doctor_facts import (
    HOST_ONLY,
    CheckItem,
    DoctorEngine,
    DoctorFacts,
    EngineFacts,
    gather_facts,
    item,
)
from detserve.doctor_gpu import (
    check_batch_invariant,
    check_compute_capability,
    check_no_gpu_under_cpu_profile,
)
from detserve.fingerprint import numerics_environment
from detserve.host_facts import GpuHost, read_gpu_host
from detserve.profile import LoadedProfile
from detserve.runtime.binding import prefix_caching_enabled, server_option
from detserve.runtime.container_spec import container_environment, engine_args
from detserve.runtime.inspection import ContainerInfo

__all__ = [
    "CHECKS",
    "CheckItem",
    "DoctorEngine",
    "DoctorFacts",
    "DoctorReport",
    "EngineFacts",
    "doctor",
    "gather_facts",
    "run_checks",
]

#: Clocks further apart than this (host and engine) are not sane.
MAX_CLOCK_SKEW: Final = timedelta(seconds=60)
#: No sane clock reads earlier than this (before detserve existed).
CLOCK_FLOOR: Final = datetime(2025, 1, 1, tzinfo=UTC)


def _not_run(name: str) -> CheckItem:
    return CheckItem(name, "NOT RUN", HOST_ONLY, "run `detserve doctor` where the engine answers")


def check_pins(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    missing = ", ".join(facts.missing_pins)
    return item(
        "pins filled",
        f"unpinned: {missing}" if missing else None,
        "model.revision and runtime.image are pinned",
        f"`detserve lock-model --config {loaded.path} --write` and "
        f"`detserve lock-image --config {loaded.path} --write`, then review and commit",
    )


def check_manifest(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    return item(
        "manifest present and verifying",
        facts.manifest_problem,
        f"the snapshot verifies against its manifest (sha256 {facts.manifest_sha256})",
        "re-download the pinned revision and `detserve verify`; a missing manifest is made only "
        "by `detserve hash` and committed by a person",
    )


def check_engine(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    if facts.engine.not_run:
        return _not_run("engine reachable")
    return item(
        "engine reachable",
        facts.engine.error,
        f"the Docker engine answers (version {facts.engine.version})",
        "start the engine (`systemctl start docker`) or set DOCKER_HOST",
    )


def check_image(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    if facts.engine.not_run:
        return _not_run("image present by digest")
    if facts.missing_pins:
        problem: str | None = "runtime.image is not pinned"
    elif facts.engine.error is not None:
        problem = "the engine does not answer"
    elif facts.engine.image is None:
        problem = f"{loaded.profile.runtime.image} is not in the engine by that digest"
    else:
        problem = None
    image = facts.engine.image
    return item(
        "image present by digest",
        problem,
        f"{loaded.profile.runtime.image} is image {image.id if image else '?'}",
        f"`detserve start --config {loaded.path}` pulls it by digest (never by tag)",
    )


def _running(facts: DoctorFacts) -> ContainerInfo | None:
    container = facts.engine.container
    return container if container is not None and container.running else None


def _where(facts: DoctorFacts) -> str:
    container = _running(facts)
    return (
        f"container {container.name}"
        if container is not None
        else "what `detserve start` would create (no container runs)"
    )


def check_binding(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    name = "container bound to the pins"
    engine = facts.engine
    if engine.not_run:
        return _not_run(name)
    container = _running(facts)
    if facts.missing_pins:
        problem: str | None = "needs the pins to know the container they describe"
    elif engine.error is not None:
        problem = "the engine does not answer"
    elif container is None:
        problem = None
    elif engine.binding_problem is not None:
        problem = f"container {container.name}: {engine.binding_problem}"
    elif engine.binding:
        problem = (
            f"container {container.name} is not the one the pins describe, so `sample` "
            f"refuses it: {'; '.join(engine.binding)}"
        )
    else:
        problem = None
    return item(
        name,
        problem,
        f"{_where(facts)}: created exactly as the pins say"
        if container is not None
        else "no container runs; `detserve start` creates it from the pins",
        f"`detserve stop --config {loaded.path}`, then `detserve run --config {loaded.path}`",
    )


def _engine_command(loaded: LoadedProfile, facts: DoctorFacts) -> tuple[str, ...] | None:
    container = _running(facts)
    if container is not None:
        return tuple(container.command)
    return None if facts.missing_pins else tuple(engine_args(loaded))


def check_prefix_caching(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    if facts.engine.not_run:
        return _not_run("prefix caching off")
    args = _engine_command(loaded, facts)
    if args is None:
        problem: str | None = "needs the pins to know the engine arguments"
    elif prefix_caching_enabled(args):
        problem = f"{_where(facts)}: prefix caching is not turned off"
    else:
        problem = None
    return item(
        "prefix caching off",
        problem,
        f"{_where(facts)} runs with --no-enable-prefix-caching",
        f"`detserve stop --config {loaded.path}` and start again: detserve always passes "
        "--no-enable-prefix-caching",
    )


def check_seed(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    if facts.engine.not_run:
        return _not_run("seed set")
    seed = str(loaded.profile.sampling.seed)
    args = _engine_command(loaded, facts)
    if args is None:
        problem: str | None = "needs the pins to know the engine arguments"
    else:
        reading = server_option(args, "--seed")
        if not reading.found or reading.value != seed:
            spelled = f" (as {', '.join(reading.spellings)})" if len(reading.spellings) > 1 else ""
            problem = (
                f"{_where(facts)}: the server's --seed is {reading.value!r}{spelled}, the "
                f"profile's sampling.seed is {seed}"
            )
        elif reading.abbreviated or len(reading.spellings) > 1:
            problem = (
                f"{_where(facts)}: --seed is given as {', '.join(reading.spellings)}: not the "
                "one plain --seed detserve passes"
            )
        else:
            problem = None
    return item(
        "seed set",
        problem,
        f"--seed {seed} (sampling.seed), also sent with every request",
        f"restart the container from the profile: `detserve stop` then `detserve run --config "
        f"{loaded.path}`",
    )


def check_numerics_environment(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    if facts.engine.not_run:
        return _not_run("numerics environment")
    if facts.missing_pins:
        return item("numerics environment", "needs the pins", "", "pin the profile first")
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
    return item(
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
    fix = (
        "synchronise the clock (`timedatectl set-ntp true`); sidecar times and certificates "
        "rely on it"
    )
    if facts.engine.not_run and not problems:
        return CheckItem(
            "host clock sane",
            "NOT RUN",
            f"{now.isoformat(timespec='seconds')}, after {CLOCK_FLOOR.date()}; the engine's clock "
            "and the image's build were not compared: no engine was asked (--host-only)",
            "run `detserve doctor` where the engine answers",
        )
    return item(
        "host clock sane",
        "; ".join(problems) or None,
        f"{now.isoformat(timespec='seconds')}, within {MAX_CLOCK_SKEW.seconds} s of the engine's",
        fix,
    )


Check = Callable[[LoadedProfile, DoctorFacts], CheckItem]
#: The checklist, in the order it is shown.
CHECKS: Final[tuple[Check, ...]] = (
    check_pins,
    check_manifest,
    check_engine,
    check_image,
    check_binding,
    check_prefix_caching,
    check_seed,
    check_batch_invariant,
    check_compute_capability,
    check_no_gpu_under_cpu_profile,
    check_numerics_environment,
    check_clock,
)


@dataclass(frozen=True)
class DoctorReport:
    profile: str
    items: tuple[CheckItem, ...]

    @property
    def failed(self) -> int:
        return sum(item.status == "FAIL" for item in self.items)

    @property
    def not_run(self) -> int:
        return sum(item.status == "NOT RUN" for item in self.items)

    @property
    def passed(self) -> bool:
        """Every item ran and passed (an item NOT RUN is no pass)."""
        return all(item.passed for item in self.items)

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.passed,
            "profile": self.profile,
            "failed": self.failed,
            "not_run": self.not_run,
            "items": [item.as_json() for item in self.items],
        }


def run_checks(loaded: LoadedProfile, facts: DoctorFacts) -> DoctorReport:
    """Every item of :data:`CHECKS` on ``facts``."""
    return DoctorReport(str(loaded.path), tuple(check(loaded, facts) for check in CHECKS))


def doctor(
    loaded: LoadedProfile,
    connect: Callable[[], DoctorEngine] | None,
    *,
    gpu: Callable[[], GpuHost] | None = None,
) -> DoctorReport:
    """Gather the facts and run the checklist (the caller decides what a FAIL exits with);
    ``connect`` None runs the host half only; ``gpu`` reads this host's GPUs (by default
    :func:`~detserve.host_facts.read_gpu_host`)."""
    facts = gather_facts(loaded, connect, gpu=gpu if gpu is not None else read_gpu_host)
    return run_checks(loaded, facts)
