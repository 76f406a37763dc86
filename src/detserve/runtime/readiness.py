"""Waiting for the pinned server to be ready, with the snapshot verified meanwhile.

``wait`` polls ``/health`` then ``/v1/models`` and watches the container meanwhile: if it exits
or restarts, the wait fails at once with its last log lines. With ``verify_manifest`` the whole
snapshot is hashed in a thread at the same time (once per container lifetime: a record of an
earlier full pass in it vouches for an unchanged snapshot, :mod:`detserve.snapshot_state`); a
mismatch fails the wait (exit 1) and the container, which has loaded weights that are not the
pinned ones, is stopped and removed.
Invariant: a wait only ever returns for a container bound to the pins
(:func:`~detserve.runtime.binding.checked_container`) that serves the pinned name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from detserve.errors import ContainerError, ServerError, SnapshotMismatch
from detserve.profile import LoadedProfile
from detserve.runtime.binding import checked_container, failure_logs
from detserve.runtime.docker_engine import ContainerEngine, ContainerInfo, DockerEngine
from detserve.runtime.reach import server_url
from detserve.runtime.vllm_client import ServedModel, VllmServer
from detserve.snapshot import VerifyReport, verify_snapshot
from detserve.snapshot_state import Lifetime, PinnedManifest, lifetime_of, verify_in_lifetime

POLL_INTERVAL_S = 0.5

WaitPhase = Literal["verifying", "starting", "loading", "ready"]


def _engine(engine: ContainerEngine | None) -> ContainerEngine:
    return engine if engine is not None else DockerEngine.from_env()


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
    """The snapshot verified in a thread for the container's lifetime, with a byte counter and a
    way to stop it early."""

    def __init__(self, loaded: LoadedProfile, container: ContainerInfo, *, full: bool) -> None:
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.done_bytes = 0
        self.total_bytes: int | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify")
        self.future: Future[VerifyReport] = self._pool.submit(
            self._verify, loaded, lifetime_of(container), full
        )

    def _verify(self, loaded: LoadedProfile, lifetime: Lifetime, full: bool) -> VerifyReport:
        return verify_in_lifetime(
            loaded.snapshot_dir,
            PinnedManifest.read(loaded.manifest_path),
            lifetime,
            full=full,
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
    full_verify: bool = False,
) -> WaitResult:
    """Wait until the server answers with the pinned model name (and the snapshot verified).

    The verification is the container lifetime's (:mod:`detserve.snapshot_state`): a record of
    a full pass earlier in this lifetime vouches for an unchanged snapshot, unless
    ``full_verify``."""
    engine = _engine(engine)
    container = checked_container(loaded, engine, what="wait for")
    timeout = float(
        timeout_s if timeout_s is not None else loaded.profile.runtime.startup_timeout_s
    )
    served_name = loaded.profile.vllm.served_model_name
    base_url = server_url(loaded, engine, container)
    started = time.monotonic()
    verify = _BackgroundVerify(loaded, container, full=full_verify) if verify_manifest else None
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
                        details=failure_logs(engine, current.id),
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
                        details=failure_logs(engine, container.id),
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


def verify_now(loaded: LoadedProfile, on_progress: ProgressSink | None) -> VerifyReport:
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
