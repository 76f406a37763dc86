"""The gateway's metrics: ``GET /metrics`` in Prometheus' text format (``prometheus_client``).

Every name begins ``detserve_gateway_``:

* ``requests_total{route, outcome}``: every request, by route (one of :data:`ROUTES`, else
  ``other``) and the status class of the status line it was sent (``2xx`` .. ``5xx``; ``none``
  when none was: the client left first). A stream that fails after its 200 counts as ``2xx``;
  its transcript line says how it ended;
* ``refusals_total{reason, param}``: refusals by reason: ``host_or_origin``, ``unauthorized``,
  ``unavailable``, ``queue_full`` (:data:`Refusal`, ``param`` ``none``), and a refused body's
  by its status: ``invalid_request`` (400), ``body_timeout`` (408), ``body_too_large`` (413),
  ``unsupported_media_type`` (415: not ``application/json``), ``other_body``. A refused body's
  ``param`` is a field admission knows (:data:`FIELDS`), ``body`` (the body as a whole) or
  ``other`` (a name the client chose, so never a label).
  What the connection layer refuses before a request reaches the application (a header
  deadline or size, the connection cap: :mod:`~detserve.gateway.connections`) is not counted;
* ``queue_pending``, ``queue_in_flight``, ``queue_capacity`` (places held, slots held at the
  engine, places in all) and ``queue_wait_seconds``: how long each request waited in its place
  for a slot at the engine (:mod:`~detserve.gateway.slots`);
* ``transcript_lines_total{record}`` (``header``, ``exchange``, ``footer``) and
  ``transcript_fsync_seconds``: each line's sync to disk, which every answer waits for;
* ``verification_age_seconds{check}``: seconds since the snapshot last verified whole
  (``snapshot``: at start, then every ``--reverify-interval`` whose check of the record of the
  container lifetime's full pass held; where no record is kept, since the start of the last
  paced full pass that completed: :mod:`~detserve.snapshot_watch`) and since the container's
  identity last checked out (``identity``: every 2 s while the watcher runs, and after an engine
  error);
* ``verification_bound_seconds{check}``: how soon a change is caught, as now measured:
  ``record``, through the file system (one ``--reverify-interval``, or the spacing the record's
  checks need to keep their share of a core on a snapshot of many files; NaN where no record is
  kept), and ``paced_pass``, below it (one paced pass; NaN before the first check);
  ``verification_cpu_seconds_total{check}``: the CPU time the checks of the record and the
  paced pass have spent (its rate is their share of a core: :mod:`~detserve.watch_share`);
* ``healthy`` (1 while the gateway answers, else 0) and ``health_state{state}``: 1 for the
  current one of :data:`HealthState`, 0 for the others. The reason's text is ``/health``'s.

Invariants:

* the registry is the gateway's own, never ``prometheus_client``'s global one: two gateways of
  one process count apart, and nothing else of the process is exported;
* every label value is one of a fixed set written here, never a client's text, so no client can
  add series (a metrics store's memory) by what it sends;
* states (the queue's depth, health, the ages) are read when scraped, never kept up per
  request; what happens per request is counted where it happens, on label children resolved
  once (the cost: docs/performance.md, "The gateway's metrics");
* ``/metrics`` is a route like the others (:mod:`~detserve.gateway.app`): behind the Host and
  Origin guards, and the API key when there is one; it answers while the gateway is unhealthy.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Literal, get_args

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from detserve.gateway import admission
from detserve.gateway.admission import Refused
from detserve.gateway.slots import RequestSlots
from detserve.gateway.transcript_segments import Transcript
from detserve.gateway.verification import FailureCause, HealthMonitor, SnapshotBounds
from detserve.runlog.models import ExchangeRequest
from detserve.runlog.transcript import LineRecord

#: The routes a request is counted under (a provenance id is not a label value), else ``other``.
ROUTES: Final = (
    *("/health", "/metrics", "/openapi.json"),
    *("/v1/models", "/v1/completions", "/v1/chat/completions"),
)
_PROVENANCE: Final = "/v1/provenance/"
#: A refusal that names no field: a foreign Host or Origin (403, guards.py), no valid API key
#: (401), the gateway unhealthy (503), every place in the queue taken (429).
Refusal = Literal["host_or_origin", "unauthorized", "unavailable", "queue_full"]
#: A refused body's reason, by its status; another status is ``other_body``.
_BODY_REASONS: Final = {
    400: "invalid_request",
    408: "body_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
}
#: The fields a refused body's ``param`` may name as a label: those admission accepts or refuses
#: by name, and those of the canonical request (its validation names them). Any other name a
#: client sent is ``other``.
FIELDS: Final = frozenset(admission.REFUSED_FIELDS).union(
    *admission.ACCEPTED_FIELDS.values(), ExchangeRequest.model_fields
)
_FIELD_HEAD: Final = re.compile(r"[^.\[]*")
#: The gateway's health: ``ok``, a failure's cause (sticky), ``doubted`` (an unexpected error:
#: 503 until the watcher's next check passes) or ``transcript_broken``.
HealthState = Literal["ok", "doubted", FailureCause, "transcript_broken"]
#: seconds: a request waits from no time at all to several answers' worth
_WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: seconds: a sync takes about 0.5 ms on this machine's disk, far longer on a busy one
_SYNC_BUCKETS: Final = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005),
    *(0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
#: what a scrape is answered with: the text format every Prometheus reads
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4


def route_of(path: str) -> str:
    """The route label of a request's path."""
    if path in ROUTES:
        return path
    return "/v1/provenance/{id}" if path.startswith(_PROVENANCE) else "other"


def outcome_of(status: int) -> str:
    """The outcome label of a status (0: none was sent)."""
    if not status:
        return "none"
    return f"{status // 100}xx" if 200 <= status < 600 else "other"


#: Every route label, and every outcome label.
ROUTE_LABELS: Final = (*ROUTES, "/v1/provenance/{id}", "other")
OUTCOMES: Final = ("2xx", "3xx", "4xx", "5xx", "none", "other")


def param_of(refused: Refused) -> str:
    """The param label of a refused body: a known field (its first part: ``messages`` of
    ``messages[2].role``), ``body``, or ``other``."""
    if refused.param is None:
        return "body"
    head = _FIELD_HEAD.match(refused.param)
    return head.group() if head and head.group() in FIELDS else "other"


@dataclass(frozen=True)
class GatewayState:
    """What a scrape reads of the gateway."""

    pending: int
    in_flight: int
    capacity: int
    health: HealthState
    snapshot_verified_at: float
    identity_checked_at: float
    snapshot_bounds: SnapshotBounds


def scraped(slots: RequestSlots, monitor: HealthMonitor, transcript: Transcript) -> GatewayState:
    """The gateway's state now, from its queue, its health monitor and its transcript."""
    cause = monitor.failure_cause
    if cause is not None:
        health: HealthState = cause
    elif monitor.unhealthy is not None:
        health = "doubted"
    else:
        health = "ok" if transcript.broken is None else "transcript_broken"
    return GatewayState(
        pending=slots.pending,
        in_flight=slots.in_flight,
        capacity=slots.capacity,
        health=health,
        snapshot_verified_at=monitor.last_verified_at,
        identity_checked_at=monitor.identity_checked_at,
        snapshot_bounds=monitor.snapshot_bounds(),
    )


class GatewayMetrics:
    """The gateway's registry, its counters, and the hooks its parts call; ``state`` is read
    at every scrape."""

    def __init__(self, state: Callable[[], GatewayState]) -> None:
        self.registry = CollectorRegistry()
        requests = Counter(
            "detserve_gateway_requests",
            "Requests by route and the status class of their answer (none: the client left "
            "before a status was sent).",
            ("route", "outcome"),
            registry=self.registry,
        )
        self._requests = {
            (route, outcome): requests.labels(route, outcome)
            for route in ROUTE_LABELS
            for outcome in OUTCOMES
        }
        self._refusals = Counter(
            "detserve_gateway_refusals",
            "Requests refused, by reason; param: the field a refused body was refused for "
            "(body: the body as a whole; other: a field admission does not know).",
            ("reason", "param"),
            registry=self.registry,
        )
        for reason in get_args(Refusal):
            self._refusals.labels(reason, "none")
        self._queue_wait = Histogram(
            "detserve_gateway_queue_wait_seconds",
            "How long a request waited in its place in the queue for a slot at the engine.",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        lines = Counter(
            "detserve_gateway_transcript_lines",
            "Transcript lines written and synced to disk, by record.",
            ("record",),
            registry=self.registry,
        )
        self._lines = {record: lines.labels(record) for record in get_args(LineRecord)}
        self._fsync = Histogram(
            "detserve_gateway_transcript_fsync_seconds",
            "How long each transcript line's fsync took (every answer waits for its line's).",
            buckets=_SYNC_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(state))

    # --- hooks --------------------------------------------------------------------------------

    def answered(self, path: str, status: int) -> None:
        self._requests[route_of(path), outcome_of(status)].inc()

    def refused(self, reason: Refusal) -> None:
        """A refusal that names no field (a body's: :meth:`refused_body`)."""
        self._refusals.labels(reason, "none").inc()

    def refused_body(self, refused: Refused) -> None:
        reason = _BODY_REASONS.get(refused.status, "other_body")
        self._refusals.labels(reason, param_of(refused)).inc()

    def waited(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def line_written(self, record: LineRecord, fsync_s: float) -> None:
        self._lines[record].inc()
        self._fsync.observe(fsync_s)

    def exposition(self) -> bytes:
        """Every metric, in Prometheus' text format."""
        return generate_latest(self.registry)


class _StateCollector:
    """The gauges read when scraped."""

    def __init__(self, state: Callable[[], GatewayState]) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._state())

    @staticmethod
    def _families(state: GatewayState | None) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "detserve_gateway_queue_pending",
            "Requests holding a place in the queue (reading, waiting or at the engine).",
        )
        in_flight = GaugeMetricFamily(
            "detserve_gateway_queue_in_flight", "Requests holding a slot at the engine."
        )
        capacity = GaugeMetricFamily(
            "detserve_gateway_queue_capacity",
            "Places in the queue (concurrency + queue size); a request beyond them: 429.",
        )
        age = GaugeMetricFamily(
            "detserve_gateway_verification_age_seconds",
            "Seconds since the snapshot last verified whole, and since the container's "
            "identity last checked out.",
            labels=("check",),
        )
        bound = GaugeMetricFamily(
            "detserve_gateway_verification_bound_seconds",
            "How soon a change to the snapshot is caught, as now measured: through the file "
            "system (record) and below it (paced_pass).",
            labels=("check",),
        )
        cpu = CounterMetricFamily(
            "detserve_gateway_verification_cpu_seconds",
            "CPU time spent checking the snapshot's record and on its paced full pass.",
            labels=("check",),
        )
        healthy = GaugeMetricFamily(
            "detserve_gateway_healthy", "1 while the gateway answers, else 0."
        )
        health = GaugeMetricFamily(
            "detserve_gateway_health_state",
            "1 for the gateway's health state, 0 for the others (the reason's text: /health).",
            labels=("state",),
        )
        if state is not None:
            pending.add_metric([], state.pending)
            in_flight.add_metric([], state.in_flight)
            capacity.add_metric([], state.capacity)
            now = time.time()
            age.add_metric(["snapshot"], max(0.0, now - state.snapshot_verified_at))
            age.add_metric(["identity"], max(0.0, now - state.identity_checked_at))
            bounds = state.snapshot_bounds
            # NaN, not absent, while unknown: the series are the same at every scrape
            record = bounds.record_s
            bound.add_metric(["record"], math.nan if record is None else record)
            paced = bounds.paced_pass_s
            bound.add_metric(["paced_pass"], math.nan if paced is None else paced)
            cpu.add_metric(["record"], bounds.record_cpu_s)
            cpu.add_metric(["paced_pass"], bounds.paced_cpu_s)
            healthy.add_metric([], 1.0 if state.health == "ok" else 0.0)
            for name in get_args(HealthState):
                health.add_metric([name], 1.0 if name == state.health else 0.0)
        yield from (pending, in_flight, capacity, age, bound, cpu, healthy, health)


class CountedRequests:
    """ASGI middleware, outermost: count every request by route and outcome once it ends."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted)
        except BaseException:
            # answered with the gateway's 500 (Starlette's error layer, or guards.LastResort
            # for what escapes it) unless an answer had begun
            status = status or 500
            raise
        finally:
            self.metrics.answered(scope["path"], status)
