"""What the gateway verifies before it serves, and keeps verifying while it does.

Before the first request, exactly what ``sample`` checks that does not depend on a prompt, by
the same path (:func:`~detserve.verified.verified_server`): every pin is filled, the running
container is the one the pins bind, bound to the manifest bytes the snapshot then verifies
against, and the server serves the pinned model (:func:`~detserve.verified.served_version`).
While serving, :class:`HealthMonitor` checks the container's identity (id, start time, restart
count) every ``identity_interval_s`` and the snapshot every ``reverify_interval_s``
(:class:`~detserve.snapshot_watch.SnapshotWatch`: the record of the lifetime's full pass, and a
full pass paced at ``reverify_bytes_per_s``, both held to a share of one core by their measured
CPU time, which may space the record's checks beyond the interval for a snapshot of many files:
:meth:`HealthMonitor.snapshot_bounds` says how soon each catches a change now, and ``/health``
and ``/metrics`` report it); the first failure is sticky: the gateway answers
503 with its reason from then on, because answers from another server or snapshot are not the
claim its transcript makes.

A *doubt* is not knowing (:meth:`HealthMonitor.doubt`): an unexpected exception answering a
request, or in a check itself. The gateway answers 503 while one stands; it is lifted by the
next watcher tick that completes (:meth:`HealthMonitor.watch_tick`) and finds nothing wrong: an
identity check for a request's doubt, every check (the snapshot's too) for a check's own. The
watcher cannot die silently: a tick's exception is logged and is such a doubt, and the watcher
goes on.

Above one request in flight the gateway needs a concurrency certificate
(:mod:`detserve.certificate`), signed and verified with the public key the operator names and
supported by its trace, for these engine pins, this seed and that level
(:func:`require_gateway_coverage`). A certificate was measured on a prompt bundle's prompts with
its ``max_tokens``; the gateway extends it to client requests, which is weaker than what
``sample`` requires, and says so in its docstring and the README: replaying the transcript (at
concurrency 1) is what checks it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Literal

from detserve.certificate import (
    CertificateMismatch,
    VerifiedCertificate,
    pins_seed_concurrency_differences,
)
from detserve.errors import DetserveError
from detserve.gateway.transcript_segments import pins_sha256_of
from detserve.profile import LoadedProfile
from detserve.runlog.models import EnginePins
from detserve.runtime.container_spec import CONTAINER_PORT
from detserve.runtime.docker_engine import ContainerEngine, ContainerInfo
from detserve.runtime.smoke import check_served_model
from detserve.runtime.vllm_client import VllmServer
from detserve.snapshot_state import PinnedManifest, lifetime_of
from detserve.snapshot_watch import DEFAULT_BYTES_PER_S, SnapshotWatch
from detserve.verified import served_version, verified_server

_log = logging.getLogger("detserve.gateway")

#: What a (sticky) failure is, as a word the metrics can carry (the reason says more).
FailureCause = Literal["container_gone", "container_changed", "snapshot_failed", "watcher_stopped"]


@dataclass(frozen=True)
class Verified:
    """A profile verified for serving: its engine pins and the container bound to them."""

    loaded: LoadedProfile
    pins: EnginePins
    seed: int
    manifest_sha256: str
    container: ContainerInfo
    #: where the gateway sends requests: the container's own address when this host reaches it
    #: (no userland proxy between), else the published port
    base_url: str
    #: the profile's published address, checked first in every case
    published_url: str

    @property
    def pins_sha256(self) -> str:
        """The pins' digest: sha256 of ``{"pins": ..., "seed": ...}`` in canonical JSON."""
        return pins_sha256_of(self.pins, self.seed)


@dataclass(frozen=True)
class SnapshotBounds:
    """How soon the gateway's checks of the snapshot catch a change, as now measured."""

    #: seconds from a change through the file system to the check of the record that sees it,
    #: at most (one interval, or the spacing a costly check needs); None where no record is kept
    record_s: float | None
    #: seconds one paced pass takes (a change no identity shows is caught within it); None
    #: before the first check
    paced_pass_s: float | None
    #: the share of one core the watch holds its measured CPU time to
    cpu_share: float
    #: CPU seconds spent so far on checks of the record and on the paced pass
    record_cpu_s: float
    paced_cpu_s: float

    def as_json(self) -> dict[str, float | None]:
        return {
            "record_check_bound_s": _rounded(self.record_s),
            "paced_pass_s": _rounded(self.paced_pass_s),
            "cpu_share": self.cpu_share,
        }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def verify_for_serving(
    loaded: LoadedProfile, engine: ContainerEngine, *, full_verify: bool = False
) -> Verified:
    """The pre-flight of ``sample`` that needs no prompt; raise on any failure."""
    loaded.require_pins()
    manifest = PinnedManifest.read(loaded.manifest_path)
    bound = verified_server(loaded, engine, manifest, what="serve", full_verify=full_verify)
    container, report, pins = bound.container, bound.report, bound.pins
    profile = loaded.profile
    # the published port for an engine on this host; a remote engine's container's own address
    published = bound.url
    version = served_version(loaded, published)
    engine_pins = pins.engine_pins(vllm_version=version)
    return Verified(
        loaded=loaded,
        pins=engine_pins,
        seed=profile.sampling.seed,
        manifest_sha256=report.manifest_sha256,
        container=container,
        base_url=_direct_url(loaded, container, version) or published,
        published_url=published,
    )


def _direct_url(loaded: LoadedProfile, container: ContainerInfo, version: str) -> str | None:
    """The bound container's own address, when this host reaches it and it serves the same.

    On Linux the published port of 127.0.0.1 goes through Docker's userland proxy: two more
    copies and process wake-ups a request, about 1.4 ms of a 57 ms tiny-model request on two
    cores (docs/performance.md). The address is the inspected container's, so it names the
    container the pins were checked on; it must serve the pinned model name and the same vLLM
    version, or the published port is used (Docker Desktop, a remote engine).
    """
    if container.ip_address is None:
        return None
    host = container.ip_address
    url = f"http://[{host}]:{CONTAINER_PORT}" if ":" in host else f"http://{host}:{CONTAINER_PORT}"
    try:
        with VllmServer(
            url, model=loaded.profile.vllm.served_model_name, timeout_s=2, retries=0
        ) as server:
            check_served_model(loaded, server)
            if server.version() != version:
                return None
    except DetserveError:
        return None
    return url


def require_gateway_coverage(
    checked: VerifiedCertificate, verified: Verified, concurrency: int
) -> None:
    """Refuse unless the verified certificate (:func:`~detserve.certificate.verify_certificate`)
    covers these engine pins, this seed and ``concurrency``."""
    certificate = checked.certificate
    lines = pins_seed_concurrency_differences(
        certificate,
        pins=verified.pins,
        seed=verified.seed,
        concurrency=concurrency,
        subject="gateway",
    )
    if lines:
        raise CertificateMismatch(
            f"the certificate (sha256 {certificate.sha256}) does not cover the gateway; "
            f"--concurrency {concurrency} is refused",
            details=sorted(lines),
            hint="run `detserve check` for these pins to measure a certificate",
        )


def _identity(container: ContainerInfo) -> tuple[str, str, int, bool]:
    return (container.id, container.started_at, container.restart_count, container.running)


class HealthMonitor:
    """The gateway's health: the first failure of a periodic check, kept until it stops.

    :meth:`tick` runs whichever checks are due (the gateway calls it from a background task,
    tests call it directly); :attr:`failure` is None while everything verifies.
    """

    def __init__(
        self,
        verified: Verified,
        engine: ContainerEngine,
        *,
        identity_interval_s: float,
        reverify_interval_s: float,
        reverify_bytes_per_s: int = DEFAULT_BYTES_PER_S,
    ) -> None:
        self.verified = verified
        self._engine = engine
        self.identity_interval_s = identity_interval_s
        self.reverify_interval_s = reverify_interval_s
        loaded = verified.loaded
        self.snapshot = SnapshotWatch(
            loaded.snapshot_dir,
            loaded.manifest_path,
            verified.manifest_sha256,
            lifetime_of(verified.container),
            bytes_per_s=reverify_bytes_per_s,
            interval_s=reverify_interval_s,
        )
        now = time.monotonic()
        self._identity_at = now
        self._snapshot_at = now
        #: as of when the whole snapshot last verified (wall clock): at start, then at every
        #: check whose record held, or, where no record is kept, a paced pass's start
        self.last_verified_at = time.time()
        #: when the container's identity last checked out (wall clock)
        self.identity_checked_at = self.last_verified_at
        self._failure: str | None = None
        self._cause: FailureCause | None = None
        self._doubt: str | None = None
        #: counts doubts raised, so that a tick lifts only those raised before it began
        self._doubts = 0
        #: a check raised: the next tick runs every check
        self._full_check_due = False
        self._lock = threading.Lock()

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def failure_cause(self) -> FailureCause | None:
        """What the failure is, or None."""
        return self._cause

    @property
    def unhealthy(self) -> str | None:
        """Why nothing is answered now (a failure, else a doubt), or None."""
        return self._failure or self._doubt

    def doubt(self, reason: str, *, full: bool = False) -> None:
        """Answer nothing until the next tick passes (every check with ``full``)."""
        with self._lock:
            self._doubt = reason
            self._doubts += 1
            self._full_check_due = self._full_check_due or full

    def recheck_identity(self) -> None:
        """Check the container now (the engine failed a request: it may be gone); an unexpected
        exception is logged and becomes a doubt, never raised."""
        try:
            self.check_identity()
        except Exception as exc:  # noqa: BLE001 - it runs unobserved, in an executor
            _log.exception("the gateway's identity check failed unexpectedly")
            self.doubt(
                f"the identity check failed unexpectedly ({type(exc).__name__}); it is run again",
                full=True,
            )

    def watch_tick(self) -> None:
        """One tick of the watcher: :meth:`tick`, with a doubt's re-check; an unexpected
        exception is logged and becomes a doubt, never raised."""
        with self._lock:
            doubts, doubted, full = self._doubts, self._doubt is not None, self._full_check_due
        try:
            if full:
                self.tick(force=True)
            else:
                if doubted:
                    self.check_identity()  # what a request's doubt needs known again
                self.tick()
        except Exception as exc:  # noqa: BLE001 - the watcher must outlive any fault of a check
            _log.exception("the gateway's health check failed unexpectedly")
            self.doubt(
                f"the health check failed unexpectedly ({type(exc).__name__}); it is run again",
                full=True,
            )
            return
        with self._lock:
            if self._failure is None and self._doubts == doubts:
                self._doubt = None
                self._full_check_due = False

    def fail(self, reason: str, cause: FailureCause) -> None:
        with self._lock:
            if self._failure is None:
                self._failure, self._cause = reason, cause

    def check_identity(self) -> None:
        initial = self.verified.container
        try:
            current = self._engine.inspect(initial.id)
        except DetserveError as exc:
            self.fail(f"container {initial.short_id} is gone: {exc.message}", "container_gone")
            return
        if _identity(current) != _identity(initial):
            self.fail(
                f"the container changed: it was {initial.short_id} started {initial.started_at} "
                f"(restarts {initial.restart_count}); it is {current.short_id} "
                f"{current.describe()}, started {current.started_at} "
                f"(restarts {current.restart_count})",
                "container_changed",
            )
            return
        self.identity_checked_at = time.time()

    def reverify_snapshot(self) -> None:
        try:
            self.snapshot.check()
        except DetserveError as exc:
            # what differs first (a changed file), then the message naming the snapshot's paths
            found = "; ".join((*exc.details, exc.message))
            self.fail(f"snapshot re-verification failed: {found}", "snapshot_failed")
            return
        # as of when the whole snapshot verified, not when this check ran: where no record is
        # kept a check reads only a slice of the paced pass (detserve.snapshot_watch)
        whole_at = self.snapshot.verified_whole_at
        if whole_at is not None:
            self.last_verified_at = max(self.last_verified_at, whole_at)

    def snapshot_bounds(self) -> SnapshotBounds:
        """How soon the snapshot's checks catch a change now, from their measured cost."""
        watch = self.snapshot
        return SnapshotBounds(
            record_s=watch.record_bound_s,
            paced_pass_s=watch.pass_seconds,
            cpu_share=watch.share.share,
            record_cpu_s=watch.share.record_cpu_total_s,
            paced_cpu_s=watch.share.paced_cpu_total_s,
        )

    def tick(self, *, force: bool = False) -> None:
        """Run the checks that are due (all of them with ``force``)."""
        now = time.monotonic()
        if force or now - self._identity_at >= self.identity_interval_s:
            self._identity_at = now
            self.check_identity()
        if force or now - self._snapshot_at >= self.reverify_interval_s:
            self._snapshot_at = now
            self.reverify_snapshot()
