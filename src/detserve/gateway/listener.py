"""Serving the gateway with uvicorn, on a socket bound before it starts, and the bind policy.

The gateway binds loopback by default; any other address needs an API key (``--secrets-file``
holding ``DETSERVE_API_KEY``), or it is refused before anything is verified. uvicorn's access
log is off: a request line is the client's business, and nothing the gateway logs holds a key.
Once bound, the gateway answers the ``Host`` values of that address and port
(:mod:`~detserve.gateway.guards`), and each connection is bounded as
:mod:`~detserve.gateway.connections` says (header deadline and size, connection cap).
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
from pathlib import Path
from typing import Final

import uvicorn

from detserve.errors import EnvironmentFault, UsageError
from detserve.gateway.app import Gateway
from detserve.gateway.connections import ConnectionLimits, guarded_protocol

#: the secrets-file name of the gateway's API key
API_KEY_NAME: Final = "DETSERVE_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere


def api_key_from(secrets_file: Path | None) -> str | None:
    """The API key of a secrets file (``DETSERVE_API_KEY``), or None without a file."""
    if secrets_file is None:
        return None
    from detserve.runtime.secrets import load_secrets_file

    secrets = load_secrets_file(secrets_file)
    if API_KEY_NAME not in secrets:
        raise UsageError(
            f"{secrets_file} has no {API_KEY_NAME}",
            hint=f"add a line {API_KEY_NAME}=... (a long random value)",
        )
    return secrets[API_KEY_NAME]


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse a non-loopback bind without an API key."""
    if not is_loopback(host) and api_key is None:
        raise UsageError(
            f"--host {host} is refused without an API key: the gateway binds loopback unless "
            "clients must authenticate",
            hint=f"pass --secrets-file FILE holding {API_KEY_NAME}=...",
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``.

    Made with the protocol named (``IPPROTO_TCP``), not ``socket.create_server``'s 0: asyncio
    sets ``TCP_NODELAY`` only on connections whose socket says TCP, and without it a keep-alive
    client waits for its delayed ACK (40 ms on Linux) between uvicorn's header and body writes.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind((host, port))
        listener.listen()
    except OSError as exc:
        listener.close()
        raise EnvironmentFault(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return listener


class GatewayServer:
    """uvicorn serving ``gateway`` on ``host:port`` (port 0: any free one)."""

    def __init__(
        self, gateway: Gateway, host: str, port: int, limits: ConnectionLimits | None = None
    ) -> None:
        self.gateway = gateway
        self.host = host
        self.socket = bind(host, port)
        self.port: int = self.socket.getsockname()[1]
        gateway.allow_hosts(host, self.port)
        config = uvicorn.Config(
            gateway.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
            # the C event loop and HTTP parser: at one request in flight the gateway's own CPU
            # time is its latency (docs/performance.md, "The gateway against the bare server")
            loop="uvloop",
            http=guarded_protocol(limits or ConnectionLimits()),
            ws="none",  # no route speaks WebSocket: an upgrade is an ordinary request
            # nothing here is behind a proxy it trusts: a client's X-Forwarded-* headers are
            # its own words, not its address or scheme
            proxy_headers=False,
            server_header=False,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        #: the signal that stopped the server, if one did
        self.stopped_by: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve in this thread until stopped (Ctrl-C, SIGTERM, or :meth:`stop`).

        uvicorn shuts down gracefully on SIGINT and SIGTERM, then raises the signal again for
        the caller; for a server, being told to stop is the normal end, so here that second
        signal is only noted (the transcript is closed and the command reports it).
        """
        main = threading.current_thread() is threading.main_thread()
        previous = {}
        if main:
            for number in (signal.SIGINT, signal.SIGTERM):
                previous[number] = signal.signal(number, self._stopped_by)
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _stopped_by(self, number: int, _frame: object) -> None:
        self.stopped_by = signal.Signals(number).name

    def start(self, timeout_s: float = 30.0) -> None:
        """Serve in a thread; return once it accepts connections."""
        self._thread = threading.Thread(target=self.run, name="detserve-gateway", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout_s / 0.02)):
            if self.server.started or not self._thread.is_alive():
                break
            deadline.wait(0.02)
        if not self.server.started:
            raise EnvironmentFault("the gateway did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
