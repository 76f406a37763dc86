"""What the gateway refuses before any route, and how every refusal is shaped.

Loopback is not a trust boundary for browsers: a web page can make a browser send requests to
``127.0.0.1``, and DNS rebinding makes a foreign name resolve there. So:

* the ``Host`` header must name the gateway as it is bound (:class:`HostPolicy`): its address and
  port, for a loopback bind also ``localhost``, ``127.0.0.1`` and ``[::1]`` at that port, and
  every ``--allowed-host`` value (matched exactly, case-insensitively: ``NAME`` or
  ``NAME:PORT``). A wildcard bind (``0.0.0.0``, ``::``), which needs an API key, accepts any
  ``Host`` unless ``--allowed-host`` names some;
* a request carrying an ``Origin`` (browsers send one on every cross-site and every POST request;
  API clients send none) is refused unless it is ``http://`` or ``https://`` and an allowed host
  (for a wildcard bind without ``--allowed-host``: none is);

both with 403 in OpenAI's error shape, before authentication and routing, on every route. Then,
with an API key, a request to any route but ``/health`` without ``Authorization: Bearer KEY`` is
refused 401 (:class:`KeyGuard`), before routing.

Every status the gateway answers is in OpenAI's error shape (``{"error": {"message", "type",
"param", "code"}}``): Starlette's own 404 and 405 (:func:`http_error`), an unexpected exception
(:func:`internal_error_response`: 500, and the gateway's health is 503 until its next check
passes), and the refusals of the routes themselves. No redirect is ever answered (a trailing
slash is a 404).

:class:`LastResort` wraps the whole application, outside Starlette's own error layer, so that
no answer of uvicorn's (its plain-text ``Internal Server Error``) can reach a client: anything
that escapes (a ``BaseException`` such as a leaked ``CancelledError``, an error of an error
handler) or an application that returns without answering is answered the same OpenAI-shaped
500, logged, and doubts the gateway; an answer already begun is ended as the relay ends a
broken stream (an error event, then the end) or, when it cannot be, its connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from detserve.errors import UsageError
from detserve.gateway.relay import ClientStalled
from detserve.gateway.upstream import error_event, error_response

_log = logging.getLogger("detserve.gateway")

_LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "[::1]")
#: what an ``--allowed-host`` value may be: a name or an address, and a port
_HOST_VALUE: Final = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
#: the routes a 404 names
ROUTES: Final = (
    "/health, /metrics, /openapi.json, /v1/models, /v1/completions, /v1/chat/completions, "
    "/v1/provenance/ID"
)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_hosts(values: Iterable[str]) -> tuple[str, ...]:
    """``--allowed-host`` values, refused unless each is ``NAME``, ``ADDRESS``, ``[IPV6]``,
    each optionally with ``:PORT``."""
    checked = []
    for value in values:
        if not _HOST_VALUE.fullmatch(value):
            raise UsageError(
                f"--allowed-host {value!r} is not a host name or address (with an optional :PORT)"
            )
        checked.append(value.lower())
    return tuple(checked)


@dataclass(frozen=True)
class HostPolicy:
    """The ``Host`` values the gateway answers, and so the ``Origin`` values it accepts."""

    #: allowed ``Host`` values, lower case; None: any (a wildcard bind without allowed hosts)
    hosts: frozenset[str] | None

    @classmethod
    def for_bind(cls, host: str, port: int, allowed: Iterable[str] = ()) -> HostPolicy:
        extra = {value.strip().lower() for value in allowed}
        if _is_wildcard(host):
            return cls(frozenset(extra) if extra else None)
        names = {host.lower()}
        if _is_loopback(host):
            names |= set(_LOOPBACK_NAMES)
        bare = {name.strip("[]") for name in names}
        values = {_authority(name, port) for name in bare}
        if port == 80:  # a client leaves the default port out
            values |= {f"[{name}]" if ":" in name else name for name in bare}
        return cls(frozenset(values | extra))

    def host_refusal(self, value: str | None) -> str | None:
        """Why a ``Host`` header is refused, or None."""
        if self.hosts is None:
            return None
        if value is None:
            return "a request needs a Host header naming the gateway"
        if value.lower() not in self.hosts:
            return (
                "the Host header does not name this gateway (DNS rebinding is refused); "
                "serve with --allowed-host NAME for another name"
            )
        return None

    def origin_refusal(self, value: str | None) -> str | None:
        """Why an ``Origin`` header is refused, or None (none given)."""
        if value is None:
            return None
        scheme, separator, rest = value.lower().partition("://")
        if (
            separator
            and scheme in ("http", "https")
            and self.hosts is not None
            and rest in self.hosts
        ):
            return None
        return "a request from a web page of another origin is refused (the Origin header)"


class BrowserGuard:
    """ASGI middleware: refuse a foreign ``Host`` or ``Origin`` (403) before anything else, and
    tell ``refused`` (the metrics)."""

    def __init__(
        self, app: ASGIApp, policy: HostPolicyHolder, refused: Callable[[], None] = lambda: None
    ) -> None:
        self.app = app
        self.policy = policy
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, []).append(value)
        policy = self.policy.current
        reason = None
        if policy is None:
            reason = "the gateway's allowed hosts are not set"
        elif len(headers.get(b"host", ())) > 1 or len(headers.get(b"origin", ())) > 1:
            reason = "a request names one Host and at most one Origin"
        else:
            host = _latin1(headers.get(b"host"))
            reason = policy.host_refusal(host) or policy.origin_refusal(
                _latin1(headers.get(b"origin"))
            )
        if reason is not None:
            self.refused()
            await error_response(403, reason)(scope, receive, send)
            return
        await self.app(scope, receive, send)


#: what a request without the API key is told
KEY_REQUIRED: Final = "a valid API key is required (Authorization: Bearer KEY)"
#: the one route answered without the API key
OPEN_ROUTE: Final = "/health"


class KeyGuard:
    """ASGI middleware: with an API key, refuse (401) every request but ``/health``'s without
    ``Authorization: Bearer KEY`` (compared in constant time), before routing: an unknown route
    or method is not told apart from a known one without the key. Tells ``refused``."""

    def __init__(
        self, app: ASGIApp, key: str | None, refused: Callable[[], None] = lambda: None
    ) -> None:
        self.app = app
        self.key = None if key is None else key.encode("utf-8")
        self.refused = refused

    def authorized(self, scope: Scope) -> bool:
        if self.key is None or scope["path"] == OPEN_ROUTE:
            return True
        values = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, token = values[0].partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        self.refused()
        await error_response(401, KEY_REQUIRED, code="invalid_api_key")(scope, receive, send)


def _latin1(values: list[bytes] | None) -> str | None:
    return None if not values else values[0].decode("latin-1")


class HostPolicyHolder:
    """Where the gateway keeps its :class:`HostPolicy`: known once its socket is bound."""

    def __init__(self, current: HostPolicy | None = None) -> None:
        self.current = current


async def http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (404, 405, ...) in OpenAI's error shape, headers kept."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no such route; the gateway serves {ROUTES}"
    elif status == 405:
        message = "this method is not allowed on this route"
    else:
        message = exc.detail
    return error_response(status, message, headers=exc.headers or {})


def internal_error_response(exc: BaseException) -> JSONResponse:
    """The 500 an unexpected exception is answered with (its type named, nothing else)."""
    return error_response(
        500,
        f"the gateway failed ({type(exc).__name__}); it answers again once its next health "
        "check passes",
    )


#: what a request the stopping gateway cancelled before its answer began is told (503)
STOPPING_MESSAGE: Final = "the gateway is stopping: this request was not answered"
#: the longest the last resort waits for a client to take its answer, in seconds
LAST_RESORT_SEND_S: Final = 10.0
#: how an error event's data begins (:func:`~detserve.gateway.upstream.error_event`)
_ERROR_EVENT: Final = b'data: {"error": '


class LastResort:
    """ASGI middleware, outermost: whatever the application lets escape, or an application
    that returns without answering, is never answered by the server's plain-text 500.

    Before an answer began: the OpenAI-shaped 500 (:func:`internal_error_response`). A stream
    already begun (``text/event-stream``) is ended with an error event unless one was sent; any
    other answer begun and unfinished has its connection closed (raising is the one way an ASGI
    application does that). Each is logged and tells ``failed`` (which doubts the gateway),
    except a cancellation of a task being cancelled (the gateway stops): answered, then raised
    on. A client that left before an answer began is answered nothing, and doubts nothing.
    """

    def __init__(
        self,
        app: ASGIApp,
        failed: Callable[[BaseException], None],
        send_timeout_s: float = LAST_RESORT_SEND_S,
    ) -> None:
        self.app = app
        self.failed = failed
        self.send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = _Answer(receive, send)
        try:
            await self.app(scope, answer.receive, answer.send)
        except BaseException as exc:  # noqa: BLE001 - the last resort: nothing passes it raw
            await self._escaped(scope, answer, exc)
            return
        if not answer.started and not answer.client_left:
            silent = RuntimeError("the application returned without answering")
            _log.error("%s %s: %s", scope["method"], _shown(scope), silent)
            self.failed(silent)
            await self._answer_500(scope, answer, silent)

    async def _escaped(self, scope: Scope, answer: _Answer, exc: BaseException) -> None:
        task = asyncio.current_task()
        stopping = (
            isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling() > 0
        )
        _log.error(
            "an unexpected error answering %s %s", scope["method"], _shown(scope), exc_info=exc
        )
        if not stopping:
            self.failed(exc)
        if not answer.started:
            await self._answer_500(scope, answer, exc, stopping=stopping)
        elif not answer.complete and answer.event_stream and not isinstance(exc, ClientStalled):
            await self._end_stream(answer)
        if stopping or (answer.started and not answer.complete):
            raise exc  # a cancellation goes on; an unfinished answer's connection is closed

    async def _end_stream(self, answer: _Answer) -> None:
        """End a stream as the relay ends a broken one: an error event (unless one was sent),
        then the end."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.send_timeout_s):
                if not answer.error_event_sent:
                    data = error_event("the gateway failed mid-stream").encode("utf-8")
                    await answer.send(
                        {
                            "type": "http.response.body",
                            "body": b"data: " + data + b"\n\n",
                            "more_body": True,
                        }
                    )
                await answer.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _answer_500(
        self, scope: Scope, answer: _Answer, exc: BaseException, *, stopping: bool = False
    ) -> None:
        """The OpenAI-shaped 500, or, for a request the stopping gateway cancelled, a 503 that
        says so (nothing failed: the request was not answered)."""
        response = (
            error_response(503, STOPPING_MESSAGE) if stopping else internal_error_response(exc)
        )
        with contextlib.suppress(Exception):  # the client may be gone, or read nothing
            async with asyncio.timeout(self.send_timeout_s):
                await response(scope, answer.receive, answer.send)


class _Answer:
    """What one request's answer has been so far, seen on its way to the server."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.started = False
        self.complete = False
        self.client_left = False
        self.event_stream = False
        self.error_event_sent = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.client_left = True
        return message

    async def send(self, message: Message) -> None:
        await self._send(message)
        if message["type"] == "http.response.start":
            self.started = True
            self.event_stream = any(
                name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                for name, value in message.get("headers", ())
            )
        elif message["type"] == "http.response.body":
            self.error_event_sent = self.error_event_sent or message.get("body", b"").startswith(
                _ERROR_EVENT
            )
            self.complete = not message.get("more_body", False)


def _shown(scope: Scope) -> str:
    """A request's path as logged: escaped, cut (it is the client's text)."""
    return ascii(str(scope.get("path", ""))[:200])
