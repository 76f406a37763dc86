"""A real HTTP server on 127.0.0.1 in a thread, answering what a test's function says.

Shared by the tests of the vLLM client (scripted answers) and of the sampler (a fake vLLM): the
client under test talks real HTTP over a real socket, so timeouts, refused connections, status
codes and malformed bodies reach it as they would from a server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Answer:
    status: int = 200
    #: a dict is sent as JSON; bytes and str as they are (malformed bodies included)
    body: bytes | str | dict[str, Any] = b""
    delay_s: float = 0.0
    #: server-sent events: each sent as ``data: EVENT``, chunked, ``event_delay_s`` apart
    events: tuple[str, ...] | None = None
    event_delay_s: float = 0.0
    #: drop the connection after this many events, mid-body, as a killed engine does
    drop_after: int | None = None

    def data(self) -> bytes:
        body = json.dumps(self.body) if isinstance(self.body, dict) else self.body
        return body.encode() if isinstance(body, str) else body


#: (method, path, parsed JSON body or None) -> the answer
Respond = Callable[[str, str, Any], Answer]


def _handler(respond: Respond, received: list[bytes] | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if received is not None and method == "POST":
                received.append(raw)  # the exact bytes, for tests of what was sent
            answer = respond(method, self.path, json.loads(raw) if raw else None)
            if answer.delay_s:
                time.sleep(answer.delay_s)
            if answer.events is not None:
                self._stream(answer)
                return
            data = answer.data()
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up: a timeout test

        def _stream(self, answer: Answer) -> None:
            self.close_connection = True
            self.protocol_version = "HTTP/1.1"  # chunked: a dropped connection is then an error
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                assert answer.events is not None
                for number, event in enumerate(answer.events):
                    if number == answer.drop_after:
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    data = f"data: {event}\n\n".encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    time.sleep(answer.event_delay_s)
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away mid-stream

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler


@contextmanager
def serving(respond: Respond, received: list[bytes] | None = None) -> Iterator[int]:
    """Serve until the block ends; yields the port. Each POST body's bytes go to
    ``received`` when given."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(respond, received))
    httpd.daemon_threads = True
    httpd.block_on_close = False  # a handler still sleeping for a timeout test is not waited for
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
