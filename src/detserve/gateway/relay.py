"""The hop to the engine and back: one admitted request sent, its answer recorded, then given.

:class:`Relay` sends the bytes admission built for the engine (``Admitted.body``, built as
the replay builds them: :mod:`~detserve.gateway.upstream_body`) and answers the client, whole
(:meth:`Relay.answer`) or as server-sent events (:meth:`Relay.stream`). The route holds the
request's place and slot (:mod:`~detserve.gateway.slots`) around either call; nothing here takes
them, and the one thing done here with the slot is to give it back early, once the engine's
answer is read to its end (:meth:`~detserve.gateway.slots.Slot.release`): the output's check
and its record need no engine.

Invariants:

* an answer is given only once its exchange is on disk: a whole answer after its line is
  synced, a stream's final event (the finish chunk, then ``[DONE]``) after its line is synced;
  a line that cannot be written fails the request (500, or an error event) and no output of it
  is sent after; a line the transcript refuses before writing it (the engine's answer is not
  vLLM's: a token id or a text no line holds) is the engine's failure (502, or an error event);
* the line says what the client was sent (``delivery``): whether the client was still connected
  is asked when the exchange is recorded (after its check), never assumed;
* a constraint's check runs in the checker's child process, awaited in a worker thread
  (:func:`~detserve.constraint_check.in_worker`), never on the event loop; a check once begun
  is finished and recorded even if the request's task is cancelled meanwhile (the client left,
  the gateway stopped), the cancellation going on after it, and the gateway stops only once
  every record under way is written (:meth:`Relay.settled`);
* a stream that ends early is recorded as incomplete with what the engine had sent, naming why:
  the client went away (seen by a watcher of the connection), the client read nothing for
  :data:`SEND_TIMEOUT_S` (it is dropped), the engine failed, the gateway failed (an unexpected
  error, re-raised for the route's 500 handler) or the gateway was stopped (any other
  cancellation);
* what a line records of a stream is what the engine streamed, so what the client was sent
  is in it: a chunk that is not vLLM's (no prompt ids first, another set of them, a token past
  ``max_tokens``, anything after the finishing chunk) or that would take the output past what
  its line holds (:mod:`~detserve.gateway.line_budget`) is the engine's failure before anything
  of it is kept or sent, and a stream closed without ``[DONE]`` is cut; a whole answer its line
  could not hold is refused (502) before its check;
* an output violating its constraint is recorded and withheld (502, or a stream's error event):
  a constrained stream's chunks wait for the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Final, TypeVar

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from detserve.constraint_check import in_worker
from detserve.errors import DetserveError, RunLogError
from detserve.gateway.admission import Admitted
from detserve.gateway.line_budget import OutputTooLong, output_budget
from detserve.gateway.slots import Slot
from detserve.gateway.transcript_segments import Provenance, Transcript, new_exchange_id
from detserve.gateway.upstream import (
    Output,
    Violation,
    engine_refusal,
    error_event,
    error_response,
    event_lines,
)
from detserve.runlog.models import Delivery, ExchangeRequest, Incomplete

#: The longest the engine may stay silent (no byte of an answer or of a stream), in seconds.
UPSTREAM_TIMEOUT_S: Final = 600.0
#: The longest one write to a client may wait for the client to read, in seconds; a client that
#: reads nothing for longer is dropped (its stream recorded ``client_stalled``).
SEND_TIMEOUT_S: Final = 60.0
#: What a failed hop to the engine raises: aiohttp's own errors (its timeouts are
#: TimeoutErrors), a socket's that reach us unwrapped (a reset), an answer's that its parser
#: refuses (``HttpProcessingError`` is no ``ClientError``), a read cut short.
UPSTREAM_ERRORS: Final = (
    aiohttp.ClientError,
    TimeoutError,
    OSError,
    HttpProcessingError,
    asyncio.IncompleteReadError,
)
#: What an engine's answer or stream that is not vLLM's raises while it is read (JSON nested
#: deeper than the parser recurses included).
_MALFORMED: Final = (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError)
#: what a client is told when its answer could not be recorded (the path is not its business)
#: what a client is told when the engine's answer is one no transcript line can hold (a token
#: id or a text that is not what vLLM answers): nothing is written, the gateway goes on
NOT_RECORDABLE: Final = (
    "the engine's answer is not what vLLM answers: it cannot be recorded, so it is not given"
)
#: what a client is told when the engine's whole answer is longer than its transcript line holds
#: (vLLM may answer one: a long ``max_tokens`` of long tokens); nothing is written
TOO_LONG: Final = "the engine's answer does not fit a transcript line: it is not given"
NOT_RECORDED: Final = (
    "the answer could not be recorded in the transcript, so it is not given; the gateway "
    "refuses requests until it is restarted"
)
_EVENT_STREAM_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}
_T = TypeVar("_T")


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
        pins_sha256: str,
        on_engine_trouble: Callable[[], None],
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        self.transcript = transcript
        self.pins_sha256 = pins_sha256
        self.send_timeout_s = send_timeout_s
        self._trouble = on_engine_trouble
        self._session: aiohttp.ClientSession | None = None
        #: checks and records under way (:meth:`_to_its_end`), awaited before the gateway stops
        self._recording: set[asyncio.Task[Any]] = set()

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

    def _post(self, admitted: Admitted) -> Any:
        # the bytes admission built, as the replay builds them (a constraint as it was sent)
        if self._session is None:
            raise RuntimeError("the relay is used outside its lifespan")
        return self._session.post(
            admitted.path,
            data=admitted.body,
            headers={"Content-Type": "application/json"},
            allow_redirects=False,
        )

    async def _record(
        self,
        exchange_id: str,
        request: ExchangeRequest,
        output: Output,
        incomplete: Incomplete | None,
        *,
        client_present: Callable[[], Awaitable[bool]],
        tokens_sent: int = 0,
    ) -> Provenance:
        """Check the output, then record the exchange; ``client_present`` is asked once the
        check is done. A constraint's check runs in the checker's child, awaited in a worker
        thread, and is finished and recorded even if this task is cancelled meanwhile
        (:meth:`_to_its_end`)."""

        async def recorded(fields: dict[str, Any]) -> Provenance:
            fields["delivery"] = delivery_of(
                fields, client_present=await client_present(), tokens_sent=tokens_sent
            )
            return self.transcript.record(exchange_id, request, fields)

        if request.constraint is None:  # nothing to check: written before anything can stop it
            return await recorded(output.fields(request, incomplete))

        async def checked() -> Provenance:
            return await recorded(await in_worker(output.fields, request, incomplete))

        return await self._to_its_end(checked())

    async def _to_its_end(self, work: Coroutine[Any, Any, _T]) -> _T:
        """``work``'s result, awaited to its end even when this task is cancelled meanwhile (the
        client left, the gateway stopped); a cancellation that came meanwhile is raised after
        it. Bounded: a check is stopped at the checker's limit."""
        task = asyncio.ensure_future(work)
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        cancelled: asyncio.CancelledError | None = None
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError as exc:
                cancelled = exc
        if cancelled is not None:
            if not task.cancelled():
                task.exception()  # retrieved: the cancellation is what goes on
            raise cancelled
        return task.result()

    async def settled(self) -> None:
        """Return once every check and record under way is done (the gateway stops after)."""
        while self._recording:
            await asyncio.wait(set(self._recording))

    # --- whole answers ------------------------------------------------------------------------

    async def answer(
        self, admitted: Admitted, slot: Slot, client_gone: Callable[[], Awaitable[bool]]
    ) -> Response:
        """The engine's whole answer, recorded: the response to send (the caller sends it once
        its place is given back). ``slot`` is given back once the engine's answer is read."""
        try:
            async with self._post(admitted) as upstream:
                status, content = upstream.status, await upstream.read()
            slot.release()  # the engine is done: the check and the record need no engine slot
        except UPSTREAM_ERRORS as exc:
            self._trouble()
            return error_response(502, f"the engine did not answer: {type(exc).__name__}")
        if status != 200:
            return engine_refusal(status, content)
        output = Output(admitted.request.kind, line_budget=output_budget(admitted.request_bytes))
        try:
            data = json.loads(content)
            output.add_answer(data)
        except OutputTooLong as exc:
            return error_response(502, f"{TOO_LONG} ({exc})")
        except _MALFORMED:
            return error_response(502, "the engine's answer is not what vLLM answers")

        task = asyncio.current_task()

        async def present() -> bool:
            # asked once the check is done: the client may have left, or the gateway stopped
            # (this request's task cancelled: its answer will never be sent) while it ran
            if task is not None and task.cancelling() > 0:
                return False
            return not await client_gone()

        try:
            provenance = await self._record(
                new_exchange_id(), admitted.request, output, None, client_present=present
            )
        except RunLogError:  # the line was refused before it was written: the engine's doing
            self._trouble()
            return error_response(502, NOT_RECORDABLE)
        except DetserveError:
            return error_response(500, NOT_RECORDED)
        if provenance.constraint_check == "violated":
            return Violation(provenance).response()
        data["detserve"] = provenance.as_json()
        return JSONResponse(data, headers=provenance.headers())

    # --- streams ------------------------------------------------------------------------------

    async def stream(
        self, admitted: Admitted, slot: Slot, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Relay the engine's stream to the client as it comes, recording it; return once the
        answer is sent, or the stream ended early and what was streamed is recorded. ``slot``
        is given back once the engine's stream is read to its end."""
        try:
            upstream = await self._post(admitted)
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
            relayed = _RelayedStream(self, admitted, slot, upstream, receive, send)
            await relayed.run()
        finally:
            upstream.release()  # closes the connection unless the answer was read to its end


class _RelayedStream:
    """One stream from the engine to the client, and what the client was sent of it."""

    def __init__(
        self,
        relay: Relay,
        admitted: Admitted,
        slot: Slot,
        upstream: aiohttp.ClientResponse,
        receive: Receive,
        send: Send,
    ) -> None:
        self.relay = relay
        self.admitted = admitted
        self.request = admitted.request
        self.slot = slot
        self.upstream = upstream
        self.receive = receive
        self.send = timed(send, relay.send_timeout_s)
        self.exchange_id = new_exchange_id()
        self.output = Output(
            self.request.kind,
            max_tokens=self.request.max_tokens,
            line_budget=output_budget(admitted.request_bytes),
        )
        self.tokens_sent = 0
        self.recorded = False
        #: set by the watcher when the client's connection closed
        self.client_gone = False
        #: set once the last message is being sent: the watcher's disconnect is then the end
        self.finished = False
        #: the task relaying the stream, once it runs
        self.task: asyncio.Task[Any] | None = None

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

    async def record(self, incomplete: Incomplete | None) -> Provenance | None:
        """Record the exchange once; None when it was already, or nothing was answered."""
        if self.recorded or (incomplete is not None and not self.output.prompt_token_ids):
            return None  # the engine answered nothing, so there is nothing to record

        async def present() -> bool:
            # asked once the check is done: the client may have left, or the gateway stopped
            # (this stream's task cancelled), while it ran
            stopped = self.task is not None and self.task.cancelling() > 0
            return incomplete is None and not self.client_gone and not stopped

        self.recorded = True
        return await self.relay._record(
            self.exchange_id,
            self.request,
            self.output,
            incomplete,
            client_present=present,
            tokens_sent=self.tokens_sent,
        )

    async def record_incomplete(self, why: Incomplete) -> None:
        # the stream already failed: a line that cannot be written now changes nothing sent,
        # and the transcript is broken (503) from then on
        with contextlib.suppress(DetserveError):
            await self.record(why)

    async def run(self) -> None:
        headers = {
            **_EVENT_STREAM_HEADERS,
            "X-Detserve-Id": self.exchange_id,
            "X-Detserve-Pins-Sha256": self.relay.pins_sha256,
            "X-Detserve-Request-Sha256": self.admitted.request_sha256,
        }
        self.task = task = asyncio.current_task()
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
            # what was streamed is recorded, its check awaited to its end (_to_its_end)
            if not self.client_gone:
                # a cancellation nobody asked of this task leaked from below: a fault, not a stop
                stopped = task.cancelling() > 0
                await self.record_incomplete("gateway_stopped" if stopped else "gateway_failed")
                raise
            await self.record_incomplete("client_disconnected")
            if task.uncancel() > 0:
                raise  # cancelled for another reason too
        except ClientStalled:
            await self.record_incomplete("client_stalled")
            raise
        except Exception:
            await self.record_incomplete("gateway_failed")
            with contextlib.suppress(Exception):
                await self.event(error_event("the gateway failed mid-stream"))
            raise
        finally:
            watcher.cancel()

    async def _relay(self) -> None:
        held: Any = None
        # a constrained stream's chunks wait for the check of the whole output
        waiting: list[str] | None = [] if self.request.constraint is not None else None
        done = False
        try:
            async for line in event_lines(self.upstream.content.iter_any()):
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    done = True
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
            if not done:  # vLLM ends every stream with it: one closed before is cut short
                raise ValueError("the engine's stream ended without [DONE]")
        except (*UPSTREAM_ERRORS, *_MALFORMED) as exc:
            self.relay._trouble()
            await self.record_incomplete("engine_failed")
            why = str(exc) if isinstance(exc, OutputTooLong) else type(exc).__name__
            await self.event(error_event(f"the engine failed mid-stream: {why}"))
            await self.end()
            return
        self.slot.release()  # the engine is done: the check and the record need no engine slot
        try:
            provenance = await self.record(None)
        except RunLogError:  # the line was refused before it was written: the engine's doing
            self.relay._trouble()
            await self.event(error_event(NOT_RECORDABLE))
            await self.end()
            return
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
