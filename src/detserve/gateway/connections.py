"""The gateway's connections: what uvicorn does not bound, bounded (slow and idle clients).

uvicorn (``httptools``) closes a keep-alive connection left idle ``timeout_keep_alive`` seconds
after an answer, but only while no byte arrives: it has no timeout for a request's headers, none
for a connection that never sends a byte, no cap on the size of the headers, and its
``limit_concurrency`` answers plain-text 503s to every request (``/health`` included) once that
many connections are open, idle ones included. :class:`GuardedProtocol` adds, per connection:

* a *header deadline*: a request's headers must be complete within ``header_timeout_s`` of the
  connection opening or of the previous answer ending, whatever trickles in meanwhile; a
  connection that sent part of a request is then answered 408, one that sent nothing is closed;
* a *header cap*: more than ``max_header_bytes`` before the headers end is answered 431;
* a *connection cap*: beyond ``max_connections`` open connections, the one waiting longest for
  a request (idle, or half-sent headers) is closed to make room; when every connection has a
  request in progress, the new one is answered 503 and closed. So idle and half-sent
  connections can never keep a client (or ``/health``) out;
* its own refusals, and uvicorn's 400 for a request it cannot parse, in OpenAI's error shape.

A request body is the application's to time (:data:`~detserve.gateway.app.BODY_TIMEOUT_S`):
the gateway reads it within a place of its queue (:mod:`~detserve.gateway.slots`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from detserve.gateway.admission import Refused

#: seconds for a request's headers to arrive (from the connection, or the previous answer)
HEADER_TIMEOUT_S: Final = 10.0
#: the most bytes of a request's line and headers
MAX_HEADER_BYTES: Final = 64 * 1024
#: the most connections open at once
MAX_CONNECTIONS: Final = 256


@dataclass(frozen=True)
class ConnectionLimits:
    """How long and how large a request's headers may be, and how many connections."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    max_header_bytes: int = MAX_HEADER_BYTES
    max_connections: int = MAX_CONNECTIONS


def answer_and_close(transport: asyncio.Transport, status: int, message: str) -> None:
    """Write a whole answer in OpenAI's error shape, then close (no request is in progress)."""
    body = json.dumps(Refused(None, message, status=status).body()).encode("utf-8")
    head = b"".join(
        (
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        )
    )
    if not transport.is_closing():
        transport.write(head + body)
    transport.close()


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol with the deadlines and caps above; use
    :func:`guarded_protocol` for a class bound to its limits."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        #: waiting for a request (not serving one), and since when
        self._waiting = False
        self._waiting_since = 0.0
        #: a request's line has begun and its headers have not ended; their bytes so far
        self._in_headers = False
        self._header_bytes = 0

    # --- the connection's life ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_request()
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self._refuse(503, "the gateway has too many connections open; retry later")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _await_request(self) -> None:
        self._cancel_deadline()
        self._waiting = True
        self._waiting_since = time.monotonic()
        self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _make_room(self) -> bool:
        """Close the connection waiting longest for a request (not this one); False when every
        other connection has a request in progress."""
        waiting = [
            connection
            for connection in self.connections
            if isinstance(connection, GuardedProtocol)
            and connection is not self
            and connection._waiting
            and not connection.transport.is_closing()
        ]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda connection: connection._waiting_since)
        oldest._cancel_deadline()
        oldest.transport.close()
        return True

    def _refuse(self, status: int, message: str) -> None:
        self._cancel_deadline()
        self._waiting = self._in_headers = False
        answer_and_close(self.transport, status, message)

    def _too_slow(self) -> None:
        self._deadline = None
        if not self._waiting or self.transport.is_closing():
            return
        if self._in_headers:
            self._refuse(
                408,
                f"the request's headers did not arrive within {self.limits.header_timeout_s:g} s",
            )
        else:
            self._waiting = False
            self.transport.close()  # an idle connection: nobody is waiting for an answer

    # --- uvicorn's parser and cycle -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Counted once a request has begun (what follows an answer may still be the body of
        # the request answered), the whole chunk: a line and headers of 64 KiB need no more.
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(
                    431,
                    f"the request's line and headers exceed {self.limits.max_header_bytes} bytes",
                )

    def on_message_begin(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._waiting = False
        self._in_headers = False
        self._cancel_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        serving_next = bool(self.pipeline)  # uvicorn starts a pipelined request now
        super().on_response_complete()
        if not serving_next and not self.transport.is_closing():
            self._await_request()

    def send_400_response(self, msg: str) -> None:
        self._cancel_deadline()
        self._waiting = self._in_headers = False
        answer_and_close(self.transport, 400, f"not an HTTP request the gateway reads: {msg}")


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` class bound to ``limits`` (uvicorn makes one per connection)."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})
