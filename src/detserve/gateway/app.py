"""The gateway: an OpenAI-compatible ASGI application (Starlette) in front of the pinned server.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST
/v1/chat/completions`` (``stream: true`` as server-sent events, as OpenAI clients expect),
``GET /v1/provenance/{id}``, ``GET /metrics`` (Prometheus) and ``GET /openapi.json`` (the
gateway's OpenAPI document, :mod:`~detserve.gateway.openapi`). This module holds the routes,
health and authentication; the hop to the engine is :mod:`~detserve.gateway.relay`, the queue
:mod:`~detserve.gateway.slots`, what is refused before any route :mod:`~detserve.gateway.guards`,
what is counted :mod:`~detserve.gateway.metrics`.

Invariants:

* nothing is answered unless :class:`~detserve.gateway.verification.HealthMonitor` finds the
  container and the snapshot as they were verified, no unexpected error left the state unknown
  since its last check, and the transcript can be written (503 with the reason otherwise);
* a request takes its place in the queue before its body is read, and its slot at the engine
  after it is admitted; both are given back on every way out (``async with``): an answer, a
  refusal, an exception, a client gone, a gateway stopped. The slot is given back as soon as
  the engine's answer is read (its check and record follow outside it); a whole answer is sent
  after it, a stream's chunks as the engine sends them;
* a request is admitted strictly (:mod:`~detserve.gateway.admission`; 400 in OpenAI's error
  shape naming the field; a body not ``application/json``, 415); a body over
  :data:`MAX_BODY_BYTES` is refused (413) before it is read whole, and one not read within
  ``body_timeout_s`` (a stalled upload) is refused (408); its whole record (canonical request,
  hash, the engine's body bytes) is built in a worker thread and its constraint compiled in the
  checker's child process (:mod:`detserve.constraint_check`) before it takes a slot;
* an answer is given only once its exchange is on disk (:mod:`~detserve.gateway.relay`);
* requests reach the engine ``concurrency`` at a time (1 unless a certificate covers more);
  up to ``queue_size`` more wait or are being read, and beyond that a request is refused with
  429 and ``Retry-After``;
* any unexpected exception is answered 500 in OpenAI's shape, logged, and doubts the gateway's
  state: health is 503 until the watcher's next identity check passes (its document then holds
  an ``error`` in OpenAI's shape too). What escapes Starlette's own error layer (a
  ``BaseException``, an error handler's fault) or a route that returns without answering is
  answered the same by :class:`~detserve.gateway.guards.LastResort`, outermost, so uvicorn's
  plain-text 500 never reaches a client;
* with an API key, every route but ``/health`` needs ``Authorization: Bearer KEY``, compared in
  constant time before routing (:class:`~detserve.gateway.guards.KeyGuard`: 401 for an unknown
  route or method too); the key is never logged or shown.

Every answer carries its provenance: ``X-Detserve-Id``, ``X-Detserve-Pins-Sha256``,
``X-Detserve-Request-Sha256`` and ``X-Detserve-Output-Sha256`` headers (a stream's output hash is
known only at its end: it is in the final chunk), and the same in a top-level ``detserve`` field
of the JSON (of a stream's final chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from detserve.gateway.admission import Policy, Refused, admit_body, check_content_type
from detserve.gateway.guards import (
    BrowserGuard,
    HostPolicy,
    HostPolicyHolder,
    KeyGuard,
    LastResort,
    http_error,
    internal_error_response,
)
from detserve.gateway.metrics import CONTENT_TYPE, CountedRequests, GatewayMetrics, scraped
from detserve.gateway.openapi import openapi_document
from detserve.gateway.relay import SEND_TIMEOUT_S, ClientStalled, Relay, timed
from detserve.gateway.slots import QueueFull, RequestSlots
from detserve.gateway.transcript_segments import EarlierExchanges, Transcript, new_exchange_id
from detserve.gateway.upstream import error_response
from detserve.gateway.verification import HealthMonitor, Verified
from detserve.runlog.models import TranscriptHeader
from detserve.runtime.docker_engine import ContainerEngine
from detserve.snapshot_watch import DEFAULT_BYTES_PER_S

#: The largest request body read, in bytes; a larger one is refused with 413 (documented).
MAX_BODY_BYTES: Final = 2 * 1024 * 1024
#: The longest a request body may take to arrive, in seconds; then 408 (a stalled upload).
BODY_TIMEOUT_S: Final = 30.0
#: What a 429 asks the client to wait, in seconds.
RETRY_AFTER_S: Final = 1


@dataclass(frozen=True)
class GatewaySettings:
    """How the gateway serves (none of it is an input of the tokens)."""

    transcript_dir: Path
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 1
    queue_size: int = 32
    identity_interval_s: float = 2.0
    reverify_interval_s: float = 2.0
    #: the pace of the periodic full pass (detserve.snapshot_watch)
    reverify_bytes_per_s: int = DEFAULT_BYTES_PER_S
    rotate_exchanges: int | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout_s: float = BODY_TIMEOUT_S
    send_timeout_s: float = SEND_TIMEOUT_S
    #: ``Host`` values answered beyond the bound address (``--allowed-host``)
    allowed_hosts: tuple[str, ...] = ()


def _disconnected(receive: Receive) -> Callable[[], Awaitable[bool]]:
    """Whether the client's connection has closed, asked without waiting: a disconnect the
    server already holds is taken, nothing else is waited for (what Starlette's
    ``Request.is_disconnected`` asks, through an anyio cancel scope that costs twice the time)."""

    async def gone() -> bool:
        try:
            async with asyncio.timeout(0):  # expires at the loop's next turn, unless answered
                message = await receive()
        except TimeoutError:
            return False
        gone: bool = message["type"] == "http.disconnect"
        return gone

    return gone


class _Endpoint:
    """A route's ASGI application: the handler gets the connection itself (receive, send),
    because a stream is sent within the request's slot."""

    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


class Gateway:
    """The application and what it serves from: verified pins, health, queue and transcript."""

    def __init__(
        self,
        verified: Verified,
        engine: ContainerEngine,
        settings: GatewaySettings,
        *,
        transcript_id: str | None = None,
        earlier: EarlierExchanges | None = None,
    ) -> None:
        self.verified = verified
        self.settings = settings
        self.metrics = GatewayMetrics(lambda: scraped(self.slots, self.monitor, self.transcript))
        self.policy = Policy.of_profile(verified.loaded.profile)  # its seed is verified.seed
        #: the OpenAPI document served at /openapi.json
        self.openapi = openapi_document(self.policy, keyed=settings.api_key is not None)
        self.monitor = HealthMonitor(
            verified,
            engine,
            identity_interval_s=settings.identity_interval_s,
            reverify_interval_s=settings.reverify_interval_s,
            reverify_bytes_per_s=settings.reverify_bytes_per_s,
        )
        header = TranscriptHeader(
            pins=verified.pins,
            previous_sha256=None,
            seed=verified.seed,
            segment=0,
            transcript_id=transcript_id or new_exchange_id(),
        )
        self.transcript = Transcript(
            settings.transcript_dir,
            header,
            pins_sha256=verified.pins_sha256,
            rotate_exchanges=settings.rotate_exchanges,
            earlier=earlier,
            on_line=self.metrics.line_written,
        )
        self.slots = RequestSlots(settings.concurrency, settings.queue_size, self.metrics.waited)
        self.relay = Relay(
            self.transcript,
            pins_sha256=verified.pins_sha256,
            on_engine_trouble=self._engine_trouble,
            send_timeout_s=settings.send_timeout_s,
        )
        #: the Host values answered: set by the server once its socket is bound
        self.hosts = HostPolicyHolder()
        #: the health watcher, while the application runs
        self.watcher: asyncio.Task[None] | None = None
        self._stopping = False
        #: the routes and their middleware; :attr:`app` wraps it
        self.starlette = Starlette(
            routes=[
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/completions", _Endpoint(self._completions), methods=["POST"]),
                Route("/v1/chat/completions", _Endpoint(self._chat), methods=["POST"]),
                Route("/v1/provenance/{exchange_id}", self._provenance, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/openapi.json", self._openapi, methods=["GET"]),
            ],
            middleware=[
                Middleware(CountedRequests, metrics=self.metrics),
                Middleware(BrowserGuard, policy=self.hosts, refused=self._foreign_refused),
                Middleware(KeyGuard, key=settings.api_key, refused=self._unauthorized),
            ],
            exception_handlers={HTTPException: http_error, Exception: self._internal_error},
            lifespan=self._lifespan,
        )
        self.starlette.router.redirect_slashes = False  # a trailing slash is a 404, never a 307
        #: the ASGI application served: nothing escapes it raw (uvicorn's plain-text 500)
        self.app = LastResort(self.starlette, self._failed)

    @property
    def refused_busy(self) -> int:
        """Requests refused 429 so far."""
        return self.slots.refused

    def allow_hosts(self, host: str, port: int) -> None:
        """Answer the ``Host`` values of a bind to ``host:port`` (and ``allowed_hosts``)."""
        self.hosts.current = HostPolicy.for_bind(host, port, self.settings.allowed_hosts)

    # --- life and health ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with self.relay.opened(self.verified.base_url):
            self.watcher = asyncio.create_task(self._watch())
            self.watcher.add_done_callback(self._watcher_ended)
            try:
                yield
            finally:
                self._stopping = True
                self.watcher.cancel()
                await self.relay.settled()  # a check under way is recorded, then the footer
                self.transcript.close("stopped")

    async def _watch(self) -> None:
        period = min(self.settings.identity_interval_s, self.settings.reverify_interval_s, 1.0)
        while self.monitor.failure is None:
            await asyncio.sleep(period)
            await asyncio.to_thread(self.monitor.watch_tick)

    def _watcher_ended(self, task: asyncio.Task[None]) -> None:
        # The watcher ends by itself only at a (sticky) failure; anything else is no watcher.
        if self._stopping or self.monitor.failure is not None:
            return
        error = None if task.cancelled() else task.exception()
        self.monitor.fail(
            "the health watcher stopped"
            + ("" if error is None else f" ({type(error).__name__})")
            + ": nothing is checked any more",
            "watcher_stopped",
        )

    def _engine_trouble(self) -> None:
        # An engine that fails a request may be gone: look now, not at the next tick.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().run_in_executor(None, self.monitor.recheck_identity)

    async def _internal_error(self, _request: Request, exc: Exception) -> Response:
        self._failed(exc)
        return internal_error_response(exc)

    def _failed(self, exc: BaseException) -> None:
        if not isinstance(exc, ClientStalled):  # a client's doing, not the gateway's state
            self.monitor.doubt(f"an unexpected error answering a request ({type(exc).__name__})")

    def unhealthy(self) -> str | None:
        """Why nothing is answered now, or None."""
        return self.monitor.unhealthy or self.transcript.broken

    async def _health(self, _request: Request) -> Response:
        reason = self.unhealthy()
        container = self.verified.container
        document = {
            "status": "ok" if reason is None else "unavailable",
            "reason": reason,
            "pins": self.verified.pins.model_dump(mode="json"),
            "seed": self.verified.seed,
            "pins_sha256": self.verified.pins_sha256,
            "container": {
                "id": container.id,
                "name": container.name,
                "started_at": container.started_at,
                "restart_count": container.restart_count,
            },
            "snapshot_verified_at": datetime.fromtimestamp(
                self.monitor.last_verified_at, UTC
            ).isoformat(),
            "snapshot_watch": self.monitor.snapshot_bounds().as_json(),
            "transcript": self.transcript.path.name,
            "concurrency": self.settings.concurrency,
            "upstream": self.verified.base_url,
        }
        if reason is not None:  # a 503 in OpenAI's error shape too, beside the health fields
            document |= Refused(None, f"the gateway does not answer: {reason}", status=503).body()
        return JSONResponse(document, 200 if reason is None else 503)

    # --- refusals, counted ---------------------------------------------------------------------

    def _foreign_refused(self) -> None:
        self.metrics.refused("host_or_origin")

    def _unauthorized(self) -> None:
        self.metrics.refused("unauthorized")

    def _unavailable(self, reason: str) -> Response:
        self.metrics.refused("unavailable")
        return error_response(503, f"the gateway does not answer: {reason}")

    def _refusal(self) -> Response | None:
        reason = self.unhealthy()
        return None if reason is None else self._unavailable(reason)

    # --- routes -------------------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        pins = self.verified.pins
        card = {
            "id": pins.served_model_name,
            "object": "model",
            "created": 0,
            "owned_by": "detserve",
            "root": pins.model_id,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def _provenance(self, request: Request) -> Response:
        exchange_id = request.path_params["exchange_id"]
        provenance = self.transcript.provenance(exchange_id)
        if provenance is None:
            return error_response(404, f"no exchange {exchange_id!r} in this gateway's transcripts")
        return JSONResponse(provenance.as_json())

    async def _metrics(self, request: Request) -> Response:
        # answered while unhealthy too: that is when it is read
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    async def _openapi(self, request: Request) -> Response:
        return JSONResponse(self.openapi)

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(scope, receive, send, "completion")

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(scope, receive, send, "chat")

    async def _generate(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        request = Request(scope, receive)
        response = self._refusal()
        try:
            if response is None:
                response = await self._queued(request, kind, scope, send)
        except QueueFull:
            self.metrics.refused("queue_full")
            response = error_response(
                429,
                "the gateway's queue is full; retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        except Refused as refused:
            self.metrics.refused_body(refused)
            # a body left unread (too large, too slow, not JSON) ends the connection with the answer
            unread = {"Connection": "close"} if refused.status in (408, 413, 415) else None
            response = JSONResponse(refused.body(), refused.status, headers=unread)
        except ClientDisconnect:
            return  # the client left while its body was read: nobody to answer
        if response is not None:
            await response(scope, receive, timed(send, self.settings.send_timeout_s))

    async def _queued(
        self, request: Request, kind: str, scope: Scope, send: Send
    ) -> Response | None:
        """Within a place in the queue: read, admit (off the event loop), then within a slot,
        relay. Returns the response still to send, or None when the stream was sent."""
        check_content_type(request.headers.get("content-type"))  # from its headers alone
        async with self.slots.place() as place:
            admitted = await admit_body(kind, await self._body(request), self.policy)
            async with place.slot() as slot:
                reason = self.unhealthy()  # it may have changed while the request waited
                if reason is not None:
                    return self._unavailable(reason)
                if admitted.stream:
                    await self.relay.stream(admitted, slot, scope, request.receive, send)
                    return None
                return await self.relay.answer(admitted, slot, _disconnected(request.receive))

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        too_large = Refused(None, f"the body is larger than the limit of {limit} bytes", status=413)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    chunks.append(chunk)
        except TimeoutError:
            raise Refused(
                None,
                f"the body did not arrive within {self.settings.body_timeout_s:g} s",
                status=408,
            ) from None
        return b"".join(chunks)
