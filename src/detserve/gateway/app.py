"""The gateway: an OpenAI-compatible ASGI application (Starlette) in front of the pinned server.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST
/v1/chat/completions`` (``stream: true`` as server-sent events, as OpenAI clients expect), and
``GET /v1/provenance/{id}``.

Invariants:

* nothing is answered unless :class:`~detserve.gateway.verification.HealthMonitor` finds the
  container and the snapshot as they were verified, and the transcript can be written (503 with
  the reason otherwise);
* a request is admitted strictly (:mod:`~detserve.gateway.admission`; 400 in OpenAI's error shape
  naming the field; a body not ``application/json``, 415), and a body over :data:`MAX_BODY_BYTES`
  is refused (413) before it is read whole; its whole record (canonical request, hash, the
  engine's body bytes) is built and its constraint compiled before it takes a slot;
* constraint compiles and output checks run in the checker's child process within a time limit
  (:mod:`detserve.constraint_check`), awaited in a worker thread, never on the event loop;
* an answer is given only once its exchange is on disk (:mod:`~detserve.gateway.transcript`): a
  whole response after its line is synced, a stream's final event (the finish chunk, then
  ``[DONE]``) after its line is synced; a line that cannot be written fails the request (500)
  and the gateway refuses from then on. A stream that ends early (the client went away, the
  engine failed) is recorded as incomplete with what was streamed, never left out;
* an output violating its constraint is recorded and withheld (502, or a stream's error event;
  :mod:`~detserve.gateway.output_check`): a constrained stream's chunks wait for the check;
* requests reach the engine ``concurrency`` at a time (1 unless a certificate covers more; a
  slot is held until the engine's answer is read, and its check and record follow outside it);
  up to ``queue_size`` more wait, and beyond that a request is refused with 429 and
  ``Retry-After``;
* with an API key, every route but ``/health`` needs ``Authorization: Bearer KEY``, compared in
  constant time; the key is never logged or shown.

Every answer carries its provenance: ``X-Detserve-Id``, ``X-Detserve-Pins-Sha256``,
``X-Detserve-Request-Sha256`` and ``X-Detserve-Output-Sha256`` headers (a stream's output hash is
known only at its end: it is in the final chunk), and the same in a top-level ``detserve`` field
of the JSON (of a stream's final chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from detserve.constraint_check import in_worker
from detserve.errors import DetserveError
from detserve.gateway.admission import (
    Admitted,
    Policy,
    Refused,
    admit_body,
    check_content_type,
)
from detserve.gateway.transcript import (
    EarlierExchanges,
    Provenance,
    Transcript,
    new_exchange_id,
)
from detserve.gateway.upstream import (
    Output,
    Violation,
    engine_refusal,
    error_event,
    error_response,
    event_lines,
)
from detserve.gateway.verification import HealthMonitor, Verified
from detserve.runlog.models import ExchangeRequest, TranscriptHeader
from detserve.runtime.engine import ContainerEngine

#: The largest request body read, in bytes; a larger one is refused with 413 (documented).
MAX_BODY_BYTES: Final = 2 * 1024 * 1024
#: What a 429 asks the client to wait, in seconds.
RETRY_AFTER_S: Final = 1
#: The longest the engine may stay silent (no byte of an answer or of a stream), in seconds.
UPSTREAM_TIMEOUT_S: Final = 600.0
#: What a failed hop to the engine raises (aiohttp's timeouts are TimeoutErrors).
UPSTREAM_ERRORS: Final = (aiohttp.ClientError, TimeoutError)
#: what a client is told when its answer could not be recorded (the path is not its business)
_NOT_RECORDED: Final = (
    "the answer could not be recorded in the transcript, so it is not given; the gateway "
    "refuses requests until it is restarted"
)


@dataclass(frozen=True)
class GatewaySettings:
    """How the gateway serves (none of it is an input of the tokens)."""

    transcript_dir: Path
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 1
    queue_size: int = 32
    identity_interval_s: float = 2.0
    reverify_interval_s: float = 300.0
    rotate_exchanges: int | None = None
    max_body_bytes: int = MAX_BODY_BYTES


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
        profile = verified.loaded.profile
        self.policy = Policy(
            served_model_name=profile.vllm.served_model_name,
            seed=verified.seed,
            default_max_tokens=profile.sampling.max_tokens,
            max_model_len=profile.vllm.max_model_len,
            structured_outputs_pinned=profile.vllm.structured_outputs is not None,
        )
        self.monitor = HealthMonitor(
            verified,
            engine,
            identity_interval_s=settings.identity_interval_s,
            reverify_interval_s=settings.reverify_interval_s,
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
        )
        self.refused_busy = 0
        self._pending = 0
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._session: aiohttp.ClientSession | None = None
        self.app = Starlette(
            routes=[
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/provenance/{exchange_id}", self._provenance, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    # --- life and health ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        # aiohttp, not httpx, for this one hop: docs/performance.md, "The gateway against the
        # bare server". No proxy from the environment, no cookies kept, no compression asked.
        self._session = aiohttp.ClientSession(
            base_url=self.verified.base_url,
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=UPSTREAM_TIMEOUT_S),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept-Encoding",),
        )
        watch = asyncio.create_task(self._watch())
        try:
            yield
        finally:
            watch.cancel()
            await self._session.close()
            self.transcript.close("stopped")

    async def _watch(self) -> None:
        period = min(self.settings.identity_interval_s, self.settings.reverify_interval_s, 1.0)
        while self.monitor.failure is None:
            await asyncio.sleep(period)
            await asyncio.to_thread(self.monitor.tick)

    def _engine_trouble(self) -> None:
        # An engine that fails a request may be gone: look now, not at the next tick.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().run_in_executor(None, self.monitor.check_identity)

    def unhealthy(self) -> str | None:
        """Why nothing is answered now, or None."""
        return self.monitor.failure or self.transcript.broken

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
            "transcript": self.transcript.path.name,
            "concurrency": self.settings.concurrency,
            "upstream": self.verified.base_url,
        }
        return JSONResponse(document, 200 if reason is None else 503)

    # --- guards -------------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        key = self.settings.api_key
        if key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("utf-8"), key.encode("utf-8")
        )

    def _refusal(self, request: Request) -> Response | None:
        if not self._authorized(request):
            return JSONResponse(
                {
                    "error": {
                        "message": "a valid API key is required (Authorization: Bearer KEY)",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
                401,
            )
        reason = self.unhealthy()
        if reason is not None:
            return error_response(503, f"the gateway does not answer: {reason}")
        return None

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise Refused(None, f"the body is larger than the limit of {limit} bytes", status=413)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(
                    None, f"the body is larger than the limit of {limit} bytes", status=413
                )
            chunks.append(chunk)
        return b"".join(chunks)

    # --- routes -------------------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        if not self._authorized(request):
            return error_response(401, "a valid API key is required (Authorization: Bearer KEY)")
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
        if not self._authorized(request):
            return error_response(401, "a valid API key is required (Authorization: Bearer KEY)")
        exchange_id = request.path_params["exchange_id"]
        provenance = self.transcript.provenance(exchange_id)
        if provenance is None:
            return error_response(404, f"no exchange {exchange_id!r} in this gateway's transcripts")
        return JSONResponse(provenance.as_json())

    async def _completions(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def _chat(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def _generate(self, request: Request, kind: str) -> Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        try:
            check_content_type(request.headers.get("content-type"))
            admitted = await admit_body(kind, await self._body(request), self.policy)
        except Refused as refused:
            return JSONResponse(refused.body(), refused.status)
        if self._pending >= self.settings.concurrency + self.settings.queue_size:
            self.refused_busy += 1
            return error_response(
                429,
                "the gateway's queue is full; retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._pending += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._slots.release()
                self._pending -= 1

        try:
            await self._slots.acquire()
        except BaseException:
            self._pending -= 1
            raise
        try:
            reason = self.unhealthy()  # it may have changed while the request waited
            if reason is not None:
                release()
                return error_response(503, f"the gateway does not answer: {reason}")
            if admitted.stream:
                return await self._stream(admitted, release)
            return await self._answer(admitted, release)
        finally:
            if not admitted.stream:
                release()

    def _post(self, admitted: Admitted) -> Any:
        # the bytes admission built, as the replay builds them (a constraint as it was sent)
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        return self._session.post(
            admitted.path, data=admitted.body, headers=headers, allow_redirects=False
        )

    async def _record(
        self,
        exchange_id: str,
        request: ExchangeRequest,
        output: Output,
        incomplete: str | None = None,
    ) -> Provenance:
        # a constraint's check runs in the checker's child, awaited in a worker thread
        if request.constraint is None:
            fields = output.fields(request, incomplete)
        else:
            fields = await in_worker(output.fields, request, incomplete)
        return self.transcript.record(exchange_id, request, fields)

    async def _answer(self, admitted: Admitted, release: Callable[[], None]) -> Response:
        try:
            async with self._post(admitted) as upstream:
                status, content = upstream.status, await upstream.read()
            release()  # the engine is done: its check and record need no engine slot
        except UPSTREAM_ERRORS as exc:
            self._engine_trouble()
            return error_response(502, f"the engine did not answer: {type(exc).__name__}")
        if status != 200:
            return engine_refusal(status, content)
        output = Output(admitted.request.kind)
        try:
            data = json.loads(content)
            output.add_answer(data)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return error_response(502, "the engine's answer is not what vLLM answers")
        try:
            provenance = await self._record(new_exchange_id(), admitted.request, output)
        except DetserveError:
            return error_response(500, _NOT_RECORDED)
        if provenance.constraint_check == "violated":
            return Violation(provenance).response()
        data["detserve"] = provenance.as_json()
        return JSONResponse(data, headers=provenance.headers())

    async def _stream(self, admitted: Admitted, release: Callable[[], None]) -> Response:
        try:
            upstream = await self._post(admitted)
        except UPSTREAM_ERRORS as exc:
            release()
            self._engine_trouble()
            return error_response(502, f"the engine did not answer: {type(exc).__name__}")
        if upstream.status != 200:
            try:
                content = await upstream.read()
            except UPSTREAM_ERRORS:
                content = b""
            finally:
                upstream.release()
                release()
            return engine_refusal(upstream.status, content)
        exchange_id = new_exchange_id()
        headers = {
            "X-Detserve-Id": exchange_id,
            "X-Detserve-Pins-Sha256": self.verified.pins_sha256,
            "X-Detserve-Request-Sha256": admitted.request_sha256,
        }
        events = self._relay(exchange_id, admitted.request, upstream, release)
        return EventSourceResponse(events, headers=headers, sep="\n", ping=600)

    async def _relay(
        self,
        exchange_id: str,
        request: ExchangeRequest,
        upstream: aiohttp.ClientResponse,
        release: Callable[[], None],
    ) -> AsyncIterator[ServerSentEvent]:
        output = Output(request.kind)
        held: Any = None
        recorded = False
        waiting: list[str] | None = [] if request.constraint is not None else None  # the check

        async def record(incomplete: str | None) -> Provenance | None:
            nonlocal recorded
            if recorded or (incomplete is not None and not output.prompt_token_ids):
                return None  # nothing was answered, so there is nothing to record
            recorded = True
            return await self._record(exchange_id, request, output, incomplete)

        try:
            try:
                async for line in event_lines(upstream.content.iter_any()):
                    if not line.startswith("data:"):
                        continue
                    payload = line[len("data:") :].strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    output.add_chunk(chunk)
                    if output.finish_reason is not None:
                        held = chunk  # the final chunk waits for the record
                    elif waiting is not None:
                        waiting.append(payload)
                    else:
                        yield ServerSentEvent(data=payload)
                if held is None:
                    raise ValueError("the engine's stream ended before its final chunk")
                release()  # the engine is done: the check and the record need no engine slot
            except (*UPSTREAM_ERRORS, ValueError, KeyError, TypeError, AttributeError) as exc:
                self._engine_trouble()
                with contextlib.suppress(DetserveError):
                    await record("engine_failed")
                yield error_event(f"the engine failed mid-stream: {type(exc).__name__}")
                return
            except BaseException:
                # The client went away (the task is cancelled): what was streamed is recorded,
                # its check awaited shielded from the cancellation.
                with contextlib.suppress(DetserveError), anyio.CancelScope(shield=True):
                    await record("client_disconnected")
                raise
            try:
                provenance = await record(None)
            except DetserveError:
                yield error_event(_NOT_RECORDED)
                return
            assert provenance is not None
            if provenance.constraint_check == "violated":
                yield Violation(provenance).event()
                return
            for payload in waiting or ():
                yield ServerSentEvent(data=payload)
            held["detserve"] = provenance.as_json()
            yield ServerSentEvent(data=json.dumps(held, ensure_ascii=False))
            yield ServerSentEvent(data="[DONE]")
        finally:
            upstream.release()  # closes the connection unless the answer was read to its end
            release()
