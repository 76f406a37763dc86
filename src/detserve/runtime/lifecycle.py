"""The life of the pinned server: start, wait, smoke, stop, run, status, logs.

Every operation starts from a fully pinned profile and checks the container's pin labels, image
reference and engine arguments against the ones that profile produces (see
:mod:`~detserve.runtime.container_spec`): a container started from anything else is never waited
on, smoked, sampled from or reused.

* ``start`` refuses before touching the engine unless every pin is set and the manifest of the
  pinned revision exists and parses. A running container with the same pins is left alone
  ("already running"); one with other pins is an error naming both, never reused.
* ``wait`` polls ``/health`` then ``/v1/models`` and watches the container meanwhile: if it
  exits or restarts, the wait fails at once with its last log lines. ``verify_manifest`` hashes
  the snapshot in a thread at the same time; a mismatch fails the wait (exit 1) and the
  container, which has loaded weights that are not the pinned ones, is stopped and removed.
* ``smoke`` checks the server serves the pinned model and that a few short greedy completions,
  each asked twice, come back identical.
* ``run`` is start, wait with verification, smoke; ``stop`` stops and removes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from detserve.errors import (
    ContainerError,
    DetserveError,
    Divergence,
    PinMismatch,
    ServerError,
    SnapshotMismatch,
)
from detserve.evaluation import first_difference
from detserve.manifest import load_manifest
from detserve.profile import LoadedProfile
from detserve.runtime.binding import bound_container, container_mismatches
from detserve.runtime.container_spec import (
    LABEL_PROFILE,
    LABEL_PROFILE_SHA256,
    PIN_LABELS,
    build_container_spec,
    container_name,
    engine_args,
    expected_labels,
    server_base_url,
)
from detserve.runtime.engine import ContainerEngine, ContainerInfo, DockerEngine
from detserve.runtime.secrets import SecretEnvironment, load_secrets_file
from detserve.runtime.server import Completion, ServedModel, VllmServer
from detserve.snapshot import VerifyReport, verify_snapshot

#: log lines shown when a container fails
FAILURE_LOG_LINES = 30
POLL_INTERVAL_S = 0.5
#: prompts of the smoke test; each is asked twice, all once before any is asked again
SMOKE_PROMPTS = ("The quick brown fox", "1, 2, 3, 4, 5,", "def main():")
SMOKE_MAX_TOKENS = 8
SMOKE_LOGPROBS = 1

WaitPhase = Literal["verifying", "starting", "loading", "ready"]


def _engine(engine: ContainerEngine | None) -> ContainerEngine:
    return engine if engine is not None else DockerEngine.from_env()


def require_manifest(loaded: LoadedProfile) -> None:
    """The manifest of the pinned revision exists and is valid; checked before anything runs."""
    loaded.require_pins()
    load_manifest(loaded.manifest_path)


def _failure_logs(engine: ContainerEngine, container_id: str) -> list[str]:
    try:
        lines = engine.logs(container_id, FAILURE_LOG_LINES)
    except DetserveError as exc:
        return [f"(its logs could not be read: {exc.message})"]
    if not lines:
        return ["(it wrote no log lines)"]
    return [f"last {len(lines)} log lines:", *(f"| {line}" for line in lines)]


def checked_container(
    loaded: LoadedProfile, engine: ContainerEngine, *, what: str
) -> ContainerInfo:
    """The profile's container: created exactly as its pins say (see
    :mod:`~detserve.runtime.binding`), and running."""
    container = bound_container(loaded, engine, what=what)
    if not container.running:
        raise ContainerError(
            f"container {container.name} is {container.describe()}",
            details=_failure_logs(engine, container.id),
            hint=f"`detserve run --config {loaded.path}` starts it again",
        )
    return container


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
    engine: ContainerEngine | None = None,
) -> StartResult:
    """Start the profile's container, or find it already running with the same pins."""
    require_manifest(loaded)
    secrets = load_secrets_file(secrets_file) if secrets_file is not None else SecretEnvironment()
    spec = build_container_spec(loaded, secrets)
    engine = _engine(engine)
    replaced = None
    existing = engine.find(spec.name)
    if existing is not None:
        mismatches = container_mismatches(loaded, existing, engine)
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
                base_url=server_base_url(loaded.profile),
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
        base_url=server_base_url(loaded.profile),
        engine_args=spec.command,
    )


# --- wait ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitProgress:
    """Where a wait stands; sent to ``on_progress`` every poll."""

    phase: WaitPhase
    elapsed_s: float
    verified_bytes: int = 0
    verify_total_bytes: int | None = None
    verify_done: bool = False


ProgressSink = Callable[[WaitProgress], None]


@dataclass(frozen=True)
class WaitResult:
    container: ContainerInfo
    base_url: str
    waited_s: float
    #: from the container's StartedAt to the server answering /v1/models with the pinned name
    start_to_ready_s: float | None
    served: tuple[ServedModel, ...]
    version: str
    verify: VerifyReport | None

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "ready": True,
            "base_url": self.base_url,
            "waited_s": round(self.waited_s, 3),
            "start_to_ready_s": (
                None if self.start_to_ready_s is None else round(self.start_to_ready_s, 3)
            ),
            "served_models": [{"id": m.id, "root": m.root} for m in self.served],
            "vllm_version": self.version,
            "snapshot_verified": None if self.verify is None else self.verify.as_json(),
            "container": self.container.as_json(),
        }


class _Cancelled(Exception):
    """Raised inside the hashing threads to stop a verification nobody waits for any more."""


class _BackgroundVerify:
    """verify_snapshot in a thread, with a byte counter and a way to stop it early."""

    def __init__(self, loaded: LoadedProfile) -> None:
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.done_bytes = 0
        self.total_bytes: int | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify")
        self.future: Future[VerifyReport] = self._pool.submit(
            verify_snapshot,
            loaded.snapshot_dir,
            loaded.manifest_path,
            progress=self._progress,
            on_total=self._total,
        )

    def _progress(self, count: int) -> None:
        if self._cancel.is_set():
            raise _Cancelled
        with self._lock:
            self.done_bytes += count

    def _total(self, total: int) -> None:
        self.total_bytes = total

    def close(self) -> None:
        self._cancel.set()
        self._pool.shutdown(wait=True)


def _parse_started_at(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def wait(
    loaded: LoadedProfile,
    timeout_s: float | None = None,
    *,
    verify_manifest: bool = False,
    on_progress: ProgressSink | None = None,
    engine: ContainerEngine | None = None,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> WaitResult:
    """Wait until the server answers with the pinned model name (and the snapshot verified)."""
    engine = _engine(engine)
    container = checked_container(loaded, engine, what="wait for")
    timeout = float(
        timeout_s if timeout_s is not None else loaded.profile.runtime.startup_timeout_s
    )
    served_name = loaded.profile.vllm.served_model_name
    base_url = server_base_url(loaded.profile)
    started = time.monotonic()
    verify = _BackgroundVerify(loaded) if verify_manifest else None
    ready_at: datetime | None = None
    served: list[ServedModel] = []
    phase: WaitPhase = "starting"
    try:
        with VllmServer(base_url, model=served_name, timeout_s=10, retries=0) as server:
            while True:
                elapsed = time.monotonic() - started
                current = engine.inspect(container.id)
                restarted = (current.started_at, current.restart_count) != (
                    container.started_at,
                    container.restart_count,
                )
                if not current.running or restarted:
                    what = "restarted" if current.running else current.describe()
                    raise ContainerError(
                        f"container {current.name} {what} while waiting for the server "
                        f"({elapsed:.0f} s)",
                        details=_failure_logs(engine, current.id),
                        hint=f"`detserve logs --config {loaded.path}` shows everything",
                    )
                if verify is not None and verify.future.done():
                    verify.future.result()  # raises SnapshotMismatch, caught below
                if ready_at is None:
                    try:
                        server.health()
                        phase = "loading"
                        served = server.models()
                    except ServerError:
                        pass
                    if any(model.id == served_name for model in served):
                        ready_at = datetime.now(UTC)
                        phase = "ready"
                verify_pending = verify is not None and not verify.future.done()
                if ready_at is not None and not verify_pending:
                    break
                if elapsed > timeout:
                    if ready_at is not None:
                        what = "the snapshot verification did not finish"
                    else:
                        what = f"the server did not serve {served_name!r}"
                    raise ContainerError(
                        f"{what} within {timeout:.0f} s",
                        details=_failure_logs(engine, container.id),
                        hint="raise runtime.startup_timeout_s or --timeout; the container is "
                        "left running for `detserve logs`",
                    )
                if on_progress is not None:
                    on_progress(_progress(phase, elapsed, verify))
                time.sleep(poll_interval_s)
            version = server.version()
    except SnapshotMismatch as exc:
        engine.stop_and_remove(container.id)
        exc.hint = (
            f"container {container.name} had loaded this snapshot and was stopped and removed; "
            "do not serve it. " + (exc.hint or "")
        ).strip()
        raise
    finally:
        if verify is not None:
            verify.close()
    report = verify.future.result() if verify is not None else None
    waited = time.monotonic() - started
    if on_progress is not None:
        on_progress(_progress("ready", waited, verify))
    started_at = _parse_started_at(container.started_at)
    return WaitResult(
        container=engine.inspect(container.id),
        base_url=base_url,
        waited_s=waited,
        start_to_ready_s=(ready_at - started_at).total_seconds() if started_at else None,
        served=tuple(served),
        version=version,
        verify=report,
    )


def _progress(phase: WaitPhase, elapsed: float, verify: _BackgroundVerify | None) -> WaitProgress:
    if verify is None:
        return WaitProgress(phase=phase, elapsed_s=elapsed)
    return WaitProgress(
        phase=phase,
        elapsed_s=elapsed,
        verified_bytes=verify.done_bytes,
        verify_total_bytes=verify.total_bytes,
        verify_done=verify.future.done(),
    )


# --- smoke --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmokeSample:
    prompt: str
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str

    def as_json(self) -> dict[str, object]:
        return {
            "prompt": self.prompt,
            "prompt_token_ids": list(self.prompt_token_ids),
            "token_ids": list(self.token_ids),
            "text": self.text,
        }


@dataclass(frozen=True)
class SmokeResult:
    served_model: str
    root: str | None
    version: str
    samples: tuple[SmokeSample, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "served_model": self.served_model,
            "root": self.root,
            "vllm_version": self.version,
            "repeats_identical": True,
            "samples": [sample.as_json() for sample in self.samples],
        }


def _root_is_model(root: str | None, loaded: LoadedProfile) -> bool:
    """vLLM reports the model it loaded as the id it was given, or as the snapshot path."""
    if root is None:
        return False
    model_id = loaded.profile.model.id
    snapshot = f"models--{model_id.replace('/', '--')}/snapshots/{loaded.revision}"
    return root == model_id or root.rstrip("/").endswith("/" + snapshot)


def _compare_repeats(prompt: str, first: Completion, second: Completion) -> list[str]:
    lines = []
    if first.prompt_token_ids != second.prompt_token_ids:
        lines.append(f"{prompt!r}: prompt token ids differ between the two runs")
    if first.token_ids != second.token_ids:
        at = first_difference(first.token_ids, second.token_ids)
        lines.append(
            f"{prompt!r}: token ids first differ at position {at}: run 1 "
            f"{list(first.token_ids)}, run 2 {list(second.token_ids)}"
        )
    elif first.text != second.text:
        lines.append(
            f"{prompt!r}: same token ids, different text: {first.text!r} vs {second.text!r}"
        )
    if first.finish_reason != second.finish_reason:
        lines.append(
            f"{prompt!r}: finish_reason {first.finish_reason!r} vs {second.finish_reason!r}"
        )
    if first.token_ids == second.token_ids and first.logprobs != second.logprobs:
        at = first_difference(first.logprobs or (), second.logprobs or ())
        lines.append(f"{prompt!r}: same tokens, logprobs first differ at position {at}")
    return lines


def check_served_model(loaded: LoadedProfile, server: VllmServer) -> str | None:
    """Raise unless the server serves the pinned model under the profile's name; return its root."""
    profile = loaded.profile
    served_name = profile.vllm.served_model_name
    served = {model.id: model for model in server.models()}
    if served_name not in served:
        raise PinMismatch(
            f"the server at {server.base_url} does not serve {served_name!r}",
            details=[f"it serves: {', '.join(sorted(served)) or '(nothing)'}"],
        )
    root = served[served_name].root
    if not _root_is_model(root, loaded):
        raise PinMismatch(
            f"the server at {server.base_url} serves {served_name!r} from {root!r}, not from "
            f"the pinned model {profile.model.id}"
        )
    return root


def smoke(loaded: LoadedProfile, *, engine: ContainerEngine | None = None) -> SmokeResult:
    """The server serves the pinned model, and repeated greedy completions are identical."""
    engine = _engine(engine)
    checked_container(loaded, engine, what="smoke-test")
    profile = loaded.profile
    served_name = profile.vllm.served_model_name
    base_url = server_base_url(profile)
    with VllmServer(base_url, model=served_name) as server:
        root = check_served_model(loaded, server)
        version = server.version()
        runs: list[list[Completion]] = [[], []]
        for run in runs:
            for prompt in SMOKE_PROMPTS:
                run.append(
                    server.complete(
                        prompt,
                        max_tokens=SMOKE_MAX_TOKENS,
                        seed=profile.sampling.seed,
                        logprobs=SMOKE_LOGPROBS,
                    )
                )
    problems = []
    for prompt, first, second in zip(SMOKE_PROMPTS, runs[0], runs[1], strict=True):
        problems += _compare_repeats(prompt, first, second)
    if problems:
        raise Divergence(
            f"the server at {base_url} answered the same greedy request differently",
            details=problems,
            hint="this server is not deterministic for these inputs; do not record runs from it",
        )
    samples = tuple(
        SmokeSample(
            prompt=prompt,
            prompt_token_ids=completion.prompt_token_ids,
            token_ids=completion.token_ids,
            text=completion.text,
        )
        for prompt, completion in zip(SMOKE_PROMPTS, runs[0], strict=True)
    )
    return SmokeResult(served_model=served_name, root=root, version=version, samples=samples)


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

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "snapshot_verified_before_start": (
                None if self.prehash is None else self.prehash.as_json()
            ),
            "start": self.start.as_json(),
            "wait": self.wait.as_json(),
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
) -> RunResult:
    """start, then wait with the whole snapshot verified meanwhile, then smoke.

    ``hash_first`` verifies the whole snapshot before the container starts as well. With
    ``stop_after`` the container is stopped and removed at the end, whether the run passed or not.
    """
    stage = on_stage or (lambda _message: None)
    require_manifest(loaded)
    prehash = None
    if hash_first:
        stage(f"verifying {loaded.snapshot_dir} against {loaded.manifest_path} before start")
        prehash = _verify_now(loaded, on_progress)
    engine = _engine(engine)
    stage(f"starting {container_name(loaded.profile)}")
    started = start(loaded, secrets_file, engine=engine)
    try:
        if started.already_running:
            stage(f"{started.container.name} is already running with these pins")
        stage(f"waiting for {started.base_url} (snapshot verified meanwhile)")
        waited = wait(
            loaded, timeout_s, verify_manifest=True, on_progress=on_progress, engine=engine
        )
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
    return RunResult(prehash=prehash, start=started, wait=waited, smoke=smoked, stopped=stopped)


def _verify_now(loaded: LoadedProfile, on_progress: ProgressSink | None) -> VerifyReport:
    began = time.monotonic()
    lock = threading.Lock()
    done = 0
    total: int | None = None

    def progress(count: int) -> None:
        nonlocal done
        with lock:
            done += count
            seen = done
        if on_progress is not None:
            on_progress(
                WaitProgress(
                    phase="verifying",
                    elapsed_s=time.monotonic() - began,
                    verified_bytes=seen,
                    verify_total_bytes=total,
                )
            )

    def on_total(value: int) -> None:
        nonlocal total
        total = value

    return verify_snapshot(
        loaded.snapshot_dir, loaded.manifest_path, progress=progress, on_total=on_total
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
    base_url = server_base_url(loaded.profile)
    container = engine.find(name)
    if container is None:
        return StatusResult(name, None, (), "no container", (), base_url)
    mismatches = tuple(container_mismatches(loaded, container, engine))
    served: tuple[ServedModel, ...] = ()
    if not container.running:
        health = f"not running: {container.describe()}"
    else:
        with VllmServer(base_url, timeout_s=5, retries=0) as server:
            try:
                server.health()
                served = tuple(server.models())
                health = "ok"
            except ServerError as exc:
                health = f"not ready: {exc.message}"
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
