"""A loopback HTTP proxy in front of a real hub, for what the hub itself cannot show or do.

olah answers as the hub does, but does not report what it was asked, cannot stall a transfer
and cannot lie. This proxy forwards every request to it unchanged and:

* records each request (method, path, headers): which revision was asked for, whether a token
  was sent;
* can hold a file's body after some bytes until released (a stalled network, so that a test can
  interrupt or kill a download mid-file);
* can drop requests unanswered (a hub that goes away in the middle of a download);
* can rewrite one header of one answer (a hub that answers a file for another commit), or a
  whole body (a listing that names a path no snapshot may hold).

Redirects olah answers (``Location``) are pointed back at the proxy, so that the client's next
request passes through it too.

Bodies are relayed as they arrive and the connection is closed after each answer (HTTP/1.0),
so a held body is really held.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Hold:
    """Hold the body of answers whose path ends with ``suffix`` after ``after_bytes``."""

    suffix: str
    after_bytes: int
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class HubProxy:
    upstream: str
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    #: (path suffix, header, value): answers to GET/HEAD of such paths carry this header value
    rewrites: list[tuple[str, str, str]] = field(default_factory=list)
    #: (path suffix, function): the bodies of answers to such paths, changed by the function
    body_rewrites: list[tuple[str, Callable[[bytes], bytes]]] = field(default_factory=list)
    #: path fragments whose requests are dropped unanswered (a hub gone mid-download)
    drops: list[str] = field(default_factory=list)

    def hold(self, suffix: str, after_bytes: int) -> Hold:
        held = Hold(suffix, after_bytes)
        self.holds.append(held)
        return held

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]


def _handler(proxy: HubProxy) -> type[BaseHTTPRequestHandler]:
    target = urllib.parse.urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def _relay(self) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            proxy.requests.append(Recorded(self.command, self.path, dict(headers)))
            if any(fragment in self.path for fragment in proxy.drops):
                self.close_connection = True
                return  # no status line: the connection just ends
            headers["Host"] = target.netloc
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                upstream.request(self.command, self.path, headers=headers)
                answer = upstream.getresponse()
                self.send_response(answer.status, answer.reason)
                path = self.path.split("?")[0]
                rewritten = {
                    header.lower(): value
                    for suffix, header, value in proxy.rewrites
                    if path.endswith(suffix)
                }
                changes = [
                    change for suffix, change in proxy.body_rewrites if path.endswith(suffix)
                ]
                for name, value in answer.getheaders():
                    lower = name.lower()
                    if lower in _HOP_BY_HOP or (changes and lower == "content-length"):
                        continue
                    if lower == "location":
                        value = value.replace(proxy.upstream, proxy.url, 1)
                    self.send_header(name, rewritten.pop(lower, value))
                for name, value in rewritten.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if changes:
                    body = answer.read()
                    for change in changes:
                        body = change(body)
                    self.wfile.write(body)
                else:
                    self._body(answer)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (killed, interrupted): nothing to relay to
            finally:
                upstream.close()

        def _body(self, answer: http.client.HTTPResponse) -> None:
            holds = [h for h in proxy.holds if self.path.split("?")[0].endswith(h.suffix)]
            sent = 0
            while chunk := answer.read(64 * 1024):
                for held in holds:
                    if sent <= held.after_bytes < sent + len(chunk):
                        cut = held.after_bytes - sent
                        self.wfile.write(chunk[:cut])
                        self.wfile.flush()
                        held.reached.set()
                        held.release.wait(timeout=120)
                        chunk, sent = chunk[cut:], sent + cut
                self.wfile.write(chunk)
                sent += len(chunk)

        def do_GET(self) -> None:
            self._relay()

        def do_HEAD(self) -> None:
            self._relay()

    return Handler


@contextmanager
def hub_proxy(upstream: str) -> Iterator[HubProxy]:
    """A proxy on 127.0.0.1 in front of ``upstream``; every hold is released at the end."""
    proxy = HubProxy(upstream=upstream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        for held in proxy.holds:
            held.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
