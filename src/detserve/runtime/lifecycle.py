"""The life of the pinned server: start, run, stop, status, logs (wait and smoke re-exported).

Every operation starts from a fully pinned profile, and a container is only ever waited on,
smoked, sampled from or reused when it is bound to the pins (:mod:`~detserve.runtime.binding`).

* ``start`` refuses before touching the engine unless every pin is set and the manifest of the
  pinned revision exists and parses. A running container bound to the same pins is left alone
  ("already running"); one that is not is an error naming each difference, never reused.
* ``wait`` (:mod:`~detserve.runtime.readiness`) and ``smoke`` (:mod:`~detserve.runtime.smoke`).
* ``run`` is start, wait with verification, smoke; ``stop`` stops and removes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from detserve.errors import ContainerError, DetserveError, PinMismatch
from detserve.manifest import load_manifest
from detserve.profile import LoadedProfile, container_name
from detserve.runtime.binding import checked_container, container_mismatches
from detserve.runtime.container_spec import (
    LABEL_PROFILE,
    LABEL_PROFILE_SHA256,
    PIN_LABELS,
    build_container_spec,
    engine_args,
    expected_labels,
    server_base_url,
)
from detserve.runtime.docker_engine import ContainerEngine, ContainerInfo, DockerEngine
from detserve.runtime.placement import Placement, apply_policy
from detserve.runtime.reach import server_url
from detserve.runtime.readiness import (
    ProgressSink,
    WaitProgress,
    WaitResult,
    verify_now,
    wait,
)
from detserve.runtime.secrets import SecretEnvironment, load_secrets_file
from detserve.runtime.smoke import (
    SMOKE_PROMPTS,
    SmokeResult,
    smoke,
)
from detserve.runtime.vllm_client import ServedModel, status_of
from detserve.snapshot import VerifyReport


def _engine(engine: ContainerEngine | None) -> ContainerEngine:
    return engine if engine is not None else DockerEngine.from_env()


def require_manifest(loaded: LoadedProfile) -> str:
    """The manifest of the pinned revision exists and is valid; checked before anything runs.

    Returns the sha256 of the bytes it parsed, for the container's label: one read a command.
    """
    loaded.require_pins()
    return load_manifest(loaded.manifest_path).sha256


# --- start --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartResult:
    container: ContainerInfo
    already_running: bool
    replaced: str | None
    base_url: str
    engine_args: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "already_running": self.already_running,
            "replaced_container": self.replaced,
            "base_url": self.base_url,
            "engine_args": list(self.engine_args),
            "container": self.container.as_json(),
        }


def start(
    loaded: LoadedProfile,
    secrets_file: Path | None = None,
    *,
    secrets: SecretEnvironment | None = None,
    engine: ContainerEngine | None = None,
) -> StartResult:
    """Start the profile's container, or find it already running with the same pins.

    Secrets come from ``secrets_file``, or already read as ``secrets``.
    """
    manifest = require_manifest(loaded)
    if secrets is None:
        secrets = load_secrets_file(secrets_file) if secrets_file else SecretEnvironment()
    spec = build_container_spec(loaded, secrets, manifest=manifest)
    engine = _engine(engine)
    replaced = None
    existing = engine.find(spec.name)
    if existing is not None:
        mismatches = container_mismatches(loaded, existing, engine, manifest=manifest)
        if existing.running:
            if mismatches:
                found = existing.labels.get(LABEL_PROFILE_SHA256, "(none)")
                raise PinMismatch(
                    f"container {spec.name} is running (profile sha256 {found}) but is not the "
                    f"one the pins of {loaded.path} describe; it is never reused",
                    details=mismatches,
                    hint=f"`detserve stop --config {loaded.path}` removes it; then start again",
                )
            return StartResult(
                container=existing,
                already_running=True,
                replaced=None,
                base_url=_url_shown(loaded, engine, existing),
                engine_args=spec.command,
            )
        if mismatches or existing.labels.get(LABEL_PROFILE) != loaded.name:
            raise ContainerError(
                f"a stopped container named {spec.name} ({existing.describe()}) with other pins "
                "is in the way",
                details=mismatches,
                hint=f"`detserve stop --config {loaded.path}` removes it",
            )
        # A stopped container of these very pins holds nothing worth keeping but its logs.
        engine.stop_and_remove(existing.id)
        replaced = existing.id
    container = engine.create_and_start(spec)
    return StartResult(
        container=container,
        already_running=False,
        replaced=replaced,
        base_url=_url_shown(loaded, engine, container),
        engine_args=spec.command,
    )


def _url_shown(loaded: LoadedProfile, engine: ContainerEngine, container: ContainerInfo) -> str:
    """Where the server will be reached, for the start's result (``wait`` and ``smoke`` refuse
    an address that cannot be reached safely; a start only reports it)."""
    try:
        return server_url(loaded, engine, container)
    except ContainerError as exc:
        return f"(not reachable safely from this host: {exc.message})"


# --- stop ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StopResult:
    name: str
    removed: ContainerInfo | None

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "name": self.name,
            "removed": self.removed is not None,
            "container": None if self.removed is None else self.removed.as_json(),
        }


def stop(loaded: LoadedProfile, *, engine: ContainerEngine | None = None) -> StopResult:
    """Stop and remove the profile's container; none there is not an error."""
    engine = _engine(engine)
    name = container_name(loaded.profile)
    container = engine.find(name)
    if container is None:
        return StopResult(name=name, removed=None)
    if container.labels.get(LABEL_PROFILE) != loaded.name:
        raise ContainerError(
            f"container {name} was not started by detserve for profile {loaded.name} "
            f"(label {LABEL_PROFILE} is {container.labels.get(LABEL_PROFILE, '(absent)')}); "
            "refusing to remove it"
        )
    engine.stop_and_remove(container.id)
    return StopResult(name=name, removed=container)


# --- run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    prehash: VerifyReport | None
    start: StartResult
    wait: WaitResult
    smoke: SmokeResult
    stopped: bool
    placement: Placement | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "snapshot_verified_before_start": (
                None if self.prehash is None else self.prehash.as_json()
            ),
            "start": self.start.as_json(),
            "wait": self.wait.as_json(),
            "cpu_placement": None if self.placement is None else self.placement.as_json(),
            "smoke": self.smoke.as_json(),
            "stopped": self.stopped,
        }


def run(
    loaded: LoadedProfile,
    secrets_file: Path | None = None,
    *,
    hash_first: bool = False,
    stop_after: bool = False,
    timeout_s: float | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_progress: ProgressSink | None = None,
    engine: ContainerEngine | None = None,
    full_verify: bool = False,
) -> RunResult:
    """start, then wait with the whole snapshot verified meanwhile, then smoke.

    ``hash_first`` verifies the whole snapshot before the container starts as well. With
    ``stop_after`` the container is stopped and removed at the end, whether the run passed or not.
    A container already running with these pins keeps its lifetime's record of a full pass
    (:mod:`detserve.snapshot_state`) unless ``full_verify``.
    """
    stage = on_stage or (lambda _message: None)
    require_manifest(loaded)
    # Every input is read before the engine is asked anything: a bad secrets file is bad input.
    secrets = load_secrets_file(secrets_file) if secrets_file else SecretEnvironment()
    prehash = None
    if hash_first:
        stage(f"verifying {loaded.snapshot_dir} against {loaded.manifest_path} before start")
        prehash = verify_now(loaded, on_progress)
    engine = _engine(engine)
    stage(f"starting {container_name(loaded.profile)}")
    started = start(loaded, secrets=secrets, engine=engine)
    try:
        if started.already_running:
            stage(f"{started.container.name} is already running with these pins")
        stage(f"waiting for {started.base_url} (snapshot verified meanwhile)")
        waited = wait(
            loaded,
            timeout_s,
            verify_manifest=True,
            on_progress=on_progress,
            engine=engine,
            full_verify=full_verify,
        )
        placement = None
        policy = loaded.profile.runtime.cpu_placement
        if policy is not None:
            # run keeps one request in flight (its smoke test): the policy's layout for that
            container = checked_container(loaded, engine, what="place")
            placement = apply_policy(engine, container, policy, concurrency=1)
            if placement is not None:
                stage(f"CPU placement ({policy}): {placement.describe()}")
        stage("smoke test: repeated greedy completions")
        smoked = smoke(loaded, engine=engine)
    except BaseException:
        if stop_after:
            with contextlib.suppress(DetserveError):
                stop(loaded, engine=engine)
        raise
    stopped = False
    if stop_after:
        stage(f"stopping {started.container.name}")
        stop(loaded, engine=engine)
        stopped = True
    return RunResult(
        prehash=prehash,
        start=started,
        wait=waited,
        smoke=smoked,
        stopped=stopped,
        placement=placement,
    )


# --- status and logs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusResult:
    name: str
    container: ContainerInfo | None
    mismatches: tuple[str, ...]
    health: str
    served: tuple[ServedModel, ...]
    base_url: str

    @property
    def pins(self) -> dict[str, str]:
        if self.container is None:
            return {}
        return {k: self.container.labels[k] for k in PIN_LABELS if k in self.container.labels}

    def check(self) -> None:
        """Raise when the container runs with other pins than the profile's."""
        if self.mismatches:
            raise PinMismatch(
                f"container {self.name} does not carry the pins of the profile",
                details=self.mismatches,
            )

    def as_json(self) -> dict[str, object]:
        return {
            "ok": not self.mismatches,
            "name": self.name,
            "container": None if self.container is None else self.container.as_json(),
            "pins": self.pins,
            "pins_match": None if self.container is None else not self.mismatches,
            "mismatches": list(self.mismatches),
            "health": self.health,
            "base_url": self.base_url,
            "served_models": [{"id": m.id, "root": m.root} for m in self.served],
        }


def status(loaded: LoadedProfile, *, engine: ContainerEngine | None = None) -> StatusResult:
    """The profile's container, the pins on its labels against the profile's, and its health."""
    expected_labels(loaded)  # fail closed on an unpinned profile or a missing manifest
    engine = _engine(engine)
    name = container_name(loaded.profile)
    container = engine.find(name)
    if container is None:
        return StatusResult(name, None, (), "no container", (), server_base_url(loaded.profile))
    mismatches = tuple(container_mismatches(loaded, container, engine))
    served: tuple[ServedModel, ...] = ()
    try:
        base_url = server_url(loaded, engine, container)
    except ContainerError as exc:
        return StatusResult(name, container, mismatches, f"unreachable: {exc.message}", (), "-")
    if not container.running:
        health = f"not running: {container.describe()}"
    else:
        health, served = status_of(base_url)
    return StatusResult(name, container, mismatches, health, served, base_url)


def logs(
    loaded: LoadedProfile,
    *,
    follow: bool = False,
    tail: int = 100,
    engine: ContainerEngine | None = None,
) -> Iterator[str]:
    """The container's last ``tail`` log lines; with ``follow``, then new ones as they come."""
    engine = _engine(engine)
    name = container_name(loaded.profile)
    container = engine.find(name)
    if container is None:
        raise ContainerError(f"no container {name}", hint="`detserve status` shows what runs")
    if follow:
        return engine.follow_logs(container.id, tail)
    return iter(engine.logs(container.id, tail))


__all__ = [
    "SMOKE_PROMPTS",
    "RunResult",
    "SmokeResult",
    "StartResult",
    "StatusResult",
    "StopResult",
    "WaitProgress",
    "WaitResult",
    "checked_container",
    "engine_args",
    "logs",
    "require_manifest",
    "run",
    "smoke",
    "start",
    "status",
    "stop",
    "wait",
]
