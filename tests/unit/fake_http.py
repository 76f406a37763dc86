"""A real HTTP server on 127.0.0.1 in a thread, answering what a test's function says.

Shared by the tests of the vLLM client (scripted answers) and of the sampler (a fake vLLM): the
client under test talks real HTTP over a real socket, so timeouts, refused connections, status
codes and malformed bodies reach it as they would from a server.
"""

from __future__ import annotations

import json
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

    def data(self) -> bytes:
        body = json.dumps(self.body) if isinstance(self.body, dict) else self.body
        return body.encode() if isinstance(body, str) else body


#: (method, path, parsed JSON body or None) -> the answer
Respond = Callable[[str, str, Any], Answer]


def _handler(respond: Respond) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            answer = respond(method, self.path, json.loads(raw) if raw else None)
            if answer.delay_s:
                time.sleep(answer.delay_s)
            data = answer.data()
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up: a timeout test

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler


@contextmanager
def serving(respond: Respond) -> Iterator[int]:
    """Serve until the block ends; yields the port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(respond))
    httpd.daemon_threads = True
    httpd.block_on_close = False  # a handler still sleeping for a timeout test is not waited for
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
