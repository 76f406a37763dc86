"""The hop to the engine and back: one admitted request sent, its answer recorded, then given.

:class:`Relay` sends an admitted request's upstream body (:func:`~detserve.gateway.admission.
upstream_body`) to the engine and answers the client, whole (:meth:`Relay.answer`) or as
server-sent events (:meth:`Relay.stream`). The route holds the request's place and slot
(:mod:`~detserve.gateway.slots`) around either call; nothing here takes or gives them back.

Invariants:

* an answer is given only once its exchange is on disk: a whole answer after its line is
  synced, a stream's final event (the finish chunk, then ``[DONE]``) after its line is synced;
  a line that cannot be written fails the request (500, or an error event) and no output of it
  is sent after;
* the line says what the client was sent (``delivery``): whether the client was still connected
  is asked when the exchange is recorded, never assumed;
* a stream that ends early is recorded as incomplete with what the engine had sent, naming why:
  the client went away (seen by a watcher of the connection), the client read nothing for
  :data:`SEND_TIMEOUT_S` (it is dropped), the engine failed, the gateway failed (an unexpected
  error, re-raised for the route's 500 handler) or the gateway was stopped (any other
  cancellation);
* an output violating its constraint is recorded and withheld (502, or a stream's error event):
  a constrained stream's chunks wait for the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import aiohttp
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from detserve.errors import DetserveError
from detserve.gateway.admission import Admitted, upstream_body, upstream_path
from detserve.gateway.transcript import Provenance, Transcript, new_exchange_id
from detserve.gateway.upstream import (
    Output,
    Violation,
    engine_refusal,
    error_event,
    error_response,
    event_lines,
)
from detserve.runlog.models import Delivery, ExchangeRequest, Incomplete
from detserve.runlog.transcript import request_sha256

#: The longest the engine may stay silent (no byte of an answer or of a stream), in seconds.
UPSTREAM_TIMEOUT_S: Final = 600.0
#: The longest one write to a client may wait for the client to read, in seconds; a client that
#: reads nothing for longer is dropped (its stream recorded ``client_stalled``).
SEND_TIMEOUT_S: Final = 60.0
#: What a failed hop to the engine raises (aiohttp's timeouts are TimeoutErrors).
UPSTREAM_ERRORS: Final = (aiohttp.ClientError, TimeoutError)
#: What an engine's stream that is not vLLM's raises while it is read.
_MALFORMED: Final = (ValueError, KeyError, TypeError, AttributeError, IndexError)
#: what a client is told when its answer could not be recorded (the path is not its business)
NOT_RECORDED: Final = (
    "the answer could not be recorded in the transcript, so it is not given; the gateway "
    "refuses requests until it is restarted"
)
_EVENT_STREAM_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}


class ClientStalled(Exception):
    """A client read nothing of its answer for :data:`SEND_TIMEOUT_S`: the connection is
    dropped (raising is the one way an ASGI application closes one mid-answer)."""


def timed(send: Send, timeout_s: float) -> Send:
    """``send``, raising :class:`ClientStalled` when one message waits longer than
    ``timeout_s`` for the client to read."""

    async def timed_send(message: Message) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await send(message)
        except TimeoutError:
            raise ClientStalled(f"the client read nothing for {timeout_s:g} s") from None

    return timed_send


def delivery_of(fields: dict[str, Any], *, client_present: bool, tokens_sent: int) -> Delivery:
    """What the client was sent of an output whose line holds ``fields``."""
    if fields["constraint_check"] == "violated":
        return "withheld" if client_present else "undelivered"
    if fields["incomplete"] is None and client_present:
        return "delivered"
    return "partial" if tokens_sent else "undelivered"


class Relay:
    """The engine's session and the transcript, shared by every request of the gateway."""

    def __init__(
        self,
        transcript: Transcript,
        *,
        model: str,
        seed: int,
        pins_sha256: str,
        on_engine_trouble: Callable[[], None],
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        self.transcript = transcript
        self.model = model
        self.seed = seed
        self.pins_sha256 = pins_sha256
        self.send_timeout_s = send_timeout_s
        self._trouble = on_engine_trouble
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def opened(self, base_url: str) -> AsyncIterator[None]:
        """The engine's HTTP session for the block (the gateway's lifespan)."""
        # aiohttp, not httpx, for this one hop: docs/performance.md, "The gateway against the
        # bare server". No proxy from the environment, no cookies kept, no compression asked.
        self._session = aiohttp.ClientSession(
            base_url=base_url,
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=UPSTREAM_TIMEOUT_S),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept-Encoding",),
        )
        try:
            yield
        finally:
            await self._session.close()
            self._session = None

    def _post(self, admitted: Admitted, *, stream: bool) -> Any:
        if self._session is None:
            raise RuntimeError("the relay is used outside its lifespan")
        body = upstream_body(admitted.request, model=self.model, seed=self.seed, stream=stream)
        return self._session.post(upstream_path(admitted.request), json=body, allow_redirects=False)

    def _record(
        self,
        exchange_id: str,
        request: ExchangeRequest,
        output: Output,
        incomplete: Incomplete | None,
        *,
        client_present: bool,
        tokens_sent: int = 0,
    ) -> Provenance:
        fields = output.fields(request, incomplete)
        fields["delivery"] = delivery_of(
            fields, client_present=client_present, tokens_sent=tokens_sent
        )
        return self.transcript.record(exchange_id, request, fields)

    # --- whole answers ------------------------------------------------------------------------

    async def answer(
        self, admitted: Admitted, client_gone: Callable[[], Awaitable[bool]]
    ) -> Response:
        """The engine's whole answer, recorded: the response to send (the caller sends it once
        its slot is given back)."""
        try:
            async with self._post(admitted, stream=False) as upstream:
                status, content = upstream.status, await upstream.read()
        except UPSTREAM_ERRORS as exc:
            self._trouble()
            return error_response(502, f"the engine did not answer: {type(exc).__name__}")
        if status != 200:
            return engine_refusal(status, content)
        output = Output(admitted.request.kind)
        try:
            data = json.loads(content)
            output.add_answer(data)
        except _MALFORMED:
            return error_response(502, "the engine's answer is not what vLLM answers")
        present = not await client_gone()
        try:
            provenance = self._record(
                new_exchange_id(), admitted.request, output, None, client_present=present
            )
        except DetserveError:
            return error_response(500, NOT_RECORDED)
        if provenance.constraint_check == "violated":
            return Violation(provenance).response()
        data["detserve"] = provenance.as_json()
        return JSONResponse(data, headers=provenance.headers())

    # --- streams ------------------------------------------------------------------------------

    async def stream(self, admitted: Admitted, scope: Scope, receive: Receive, send: Send) -> None:
        """Relay the engine's stream to the client as it comes, recording it; return once the
        answer is sent, or the stream ended early and what was streamed is recorded."""
        try:
            upstream = await self._post(admitted, stream=True)
        except UPSTREAM_ERRORS as exc:
            self._trouble()
            refusal = error_response(502, f"the engine did not answer: {type(exc).__name__}")
            await refusal(scope, receive, send)
            return
        try:
            if upstream.status != 200:
                try:
                    content = await upstream.read()
                except UPSTREAM_ERRORS:
                    content = b""
                await engine_refusal(upstream.status, content)(scope, receive, send)
                return
            relayed = _RelayedStream(self, admitted.request, upstream, receive, send)
            await relayed.run()
        finally:
            upstream.release()  # closes the connection unless the answer was read to its end


class _RelayedStream:
    """One stream from the engine to the client, and what the client was sent of it."""

    def __init__(
        self,
        relay: Relay,
        request: ExchangeRequest,
        upstream: aiohttp.ClientResponse,
        receive: Receive,
        send: Send,
    ) -> None:
        self.relay = relay
        self.request = request
        self.upstream = upstream
        self.receive = receive
        self.send = timed(send, relay.send_timeout_s)
        self.exchange_id = new_exchange_id()
        self.output = Output(request.kind)
        self.tokens_sent = 0
        self.recorded = False
        #: set by the watcher when the client's connection closed
        self.client_gone = False
        #: set once the last message is being sent: the watcher's disconnect is then the end
        self.finished = False

    async def event(self, data: str) -> None:
        body = b"data: " + data.encode("utf-8") + b"\n\n"
        await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def _watch(self, task: asyncio.Task[Any]) -> None:
        """Cancel the stream when the client's connection closes."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.finished:
                    self.client_gone = True
                    task.cancel()
                return

    def record(self, incomplete: Incomplete | None) -> Provenance | None:
        """Record the exchange once; None when it was already, or nothing was answered."""
        if self.recorded or (incomplete is not None and not self.output.prompt_token_ids):
            return None  # the engine answered nothing, so there is nothing to record
        self.recorded = True
        return self.relay._record(
            self.exchange_id,
            self.request,
            self.output,
            incomplete,
            client_present=not self.client_gone and incomplete is None,
            tokens_sent=self.tokens_sent,
        )

    def record_incomplete(self, why: Incomplete) -> None:
        # the stream already failed: a line that cannot be written now changes nothing sent,
        # and the transcript is broken (503) from then on
        with contextlib.suppress(DetserveError):
            self.record(why)

    async def run(self) -> None:
        headers = {
            **_EVENT_STREAM_HEADERS,
            "X-Detserve-Id": self.exchange_id,
            "X-Detserve-Pins-Sha256": self.relay.pins_sha256,
            "X-Detserve-Request-Sha256": request_sha256(self.request),
        }
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(self._watch(task))
        try:
            await self.send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                }
            )
            await self._relay()
        except asyncio.CancelledError:
            if not self.client_gone:
                self.record_incomplete("gateway_stopped")
                raise
            self.record_incomplete("client_disconnected")
            if task.uncancel() > 0:
                raise  # cancelled for another reason too
        except ClientStalled:
            self.record_incomplete("client_stalled")
            raise
        except Exception:
            self.record_incomplete("gateway_failed")
            with contextlib.suppress(Exception):
                await self.event(error_event("the gateway failed mid-stream"))
            raise
        finally:
            watcher.cancel()

    async def _relay(self) -> None:
        held: Any = None
        # a constrained stream's chunks wait for the check of the whole output
        waiting: list[str] | None = [] if self.request.constraint is not None else None
        try:
            async for line in event_lines(self.upstream.content.iter_any()):
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                before = len(self.output.token_ids)
                self.output.add_chunk(chunk)
                if self.output.finish_reason is not None:
                    held = chunk  # the final chunk waits for the record
                elif waiting is not None:
                    waiting.append(payload)
                else:
                    await self.event(payload)
                    self.tokens_sent += len(self.output.token_ids) - before
            if held is None:
                raise ValueError("the engine's stream ended before its final chunk")
        except (*UPSTREAM_ERRORS, *_MALFORMED) as exc:
            self.relay._trouble()
            self.record_incomplete("engine_failed")
            await self.event(error_event(f"the engine failed mid-stream: {type(exc).__name__}"))
            await self.end()
            return
        try:
            provenance = self.record(None)
        except DetserveError:
            await self.event(error_event(NOT_RECORDED))
            await self.end()
            return
        assert provenance is not None
        if provenance.constraint_check == "violated":
            await self.event(Violation(provenance).event())
            await self.end()
            return
        for payload in waiting or ():
            await self.event(payload)
        held["detserve"] = provenance.as_json()
        await self.event(json.dumps(held, ensure_ascii=False))
        await self.event("[DONE]")
        await self.end()

    async def end(self) -> None:
        self.finished = True
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
