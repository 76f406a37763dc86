"""The hostile load of bench_gateway_hostile.py: requests that make the gateway's checker and the
engine work (a large grammar, a catastrophic regex), and idle and half-sent connections, each
held in flight from its own thread until stopped, noting when each was in flight."""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchlib import BenchError

#: what a half-sent connection sends first, then one more byte a second
HALF_SENT = (
    b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
)
#: the built-in hostile requests (``--hostile``)
BUILT_IN = ("grammar", "regex")
#: Python's ``re`` tries every way of splitting a run of ``a`` into ``a`` and ``aa`` (Fibonacci
#: many) before it gives up on the missing ``c``
CATASTROPHIC_PATTERN = "^(a|aa)*c$"


# --- the hostile requests ------------------------------------------------------------------------


def hostile_grammar(nonce: int, rules: int = 260, optionals: int = 6) -> str:
    """A Lark grammar of about 12 KB (under the gateway's 16 KiB cap): ``start`` is any of
    ``rules`` rules, each ``optionals`` optional one-letter literals then ``"z"``, or the literal
    ``q<nonce>``. Lark's Earley compile expands every optional into alternatives, 2**optionals a
    rule (about 1.7 s here, within the checker's 10 s: it is admitted and sent on); the engine's
    xgrammar compiles it again, and the gateway parses the output with it. The nonce makes each
    send a grammar neither the checker's nor the engine's cache has seen."""
    lines = ["start: " + " | ".join(f"r{i}" for i in range(rules)) + f' | "q{nonce}"']
    for i in range(rules):
        letters = (chr(ord("a") + (i + j) % 25) for j in range(optionals))
        lines.append(f"r{i}: " + " ".join(f'"{letter}"?' for letter in letters) + ' "z"')
    return "\n".join(lines) + "\n"


def catastrophic_schema(run: int = 60) -> dict[str, Any]:
    """A JSON schema whose one string must match :data:`CATASTROPHIC_PATTERN` and be ``run``
    letters ``a`` (an ``enum``): the engine writes the enum's string, and a check of it against
    the pattern backtracks through about 1.6**run ways before it fails."""
    value = {"type": "string", "pattern": CATASTROPHIC_PATTERN, "enum": ["a" * run]}
    return {
        "type": "object",
        "properties": {"s": value},
        "required": ["s"],
        "additionalProperties": False,
    }


def built_in_request(name: str, model: str) -> Callable[[int], Any]:
    """The body of a built-in hostile request (a completion), given its send's number."""
    if name == "grammar":
        return lambda nonce: {
            "model": model,
            "prompt": "Write one word",
            "max_tokens": 16,
            "structured_outputs": {"grammar": hostile_grammar(nonce)},
        }
    schema = catastrophic_schema()
    return lambda _: {
        "model": model,
        "prompt": "Write a run of the letter a",
        "max_tokens": 128,
        "structured_outputs": {"json": schema},
    }


def read_request(path: Path) -> tuple[str, Callable[[int], Any]]:
    """A ``--request`` file's path and body (the same each send)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or {"path", "body"} - document.keys():
        raise BenchError(f"{path}: expected a JSON object with a path and a body")
    body = document["body"]
    return str(document["path"]), lambda _: body


@dataclass
class Sent:
    """One hostile request, sent again and again: when each send was in flight, and what the
    gateway answered (status, ``constraint_check`` or error ``code``; gateway text never
    printed raw)."""

    name: str
    path: str
    #: the body of each send, given its number
    body_for: Callable[[int], Any]
    spans: list[tuple[float, float]] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    #: the first error message, for the record
    first_error: str | None = None
    began: float | None = None

    def answered(self, response: httpx.Response | None) -> str:
        if response is None:
            return "no answer"
        try:
            document = response.json()
        except ValueError:
            if self.first_error is None:
                self.first_error = f"not JSON: {response.text[:500]!r}"
            return f"{response.status_code} not JSON"
        if not isinstance(document, dict):
            return f"{response.status_code} not an object"
        if response.status_code == 200:
            check = document.get("detserve", {}).get("constraint_check")
            return f"200 {check}"
        error = document.get("error")
        error = error if isinstance(error, dict) else {}
        if self.first_error is None:
            self.first_error = str(error.get("message"))[:500]
        return f"{response.status_code} {error.get('code')}"

    def in_flight(self, moment: float) -> bool:
        if self.began is not None and self.began <= moment:
            return True  # the send under way when the probes ended
        return any(start <= moment <= end for start, end in self.spans)

    def as_json(self) -> dict[str, Any]:
        durations = [end - start for start, end in self.spans]
        return {
            "name": self.name,
            "path": self.path,
            "body_bytes": len(json.dumps(self.body_for(0))),
            "answers": dict(self.answers),
            "completed": len(self.spans),
            "median_s": round(statistics.median(durations), 3) if durations else None,
            "max_s": round(max(durations), 3) if durations else None,
            "first_error": self.first_error,
        }


class HostileRequests:
    """Each request sent again and again, one at a time, from its own thread, until
    :meth:`stop`."""

    def __init__(self, base_url: str, requests: list[Sent]) -> None:
        self.base_url = base_url
        self.requests = requests
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, args=(sent,), daemon=True) for sent in requests
        ]

    def _send(self, sent: Sent) -> None:
        with httpx.Client(base_url=self.base_url, trust_env=False, timeout=600) as client:
            while not self._stop.is_set():
                body = sent.body_for(len(sent.spans))
                sent.began = time.perf_counter()
                try:
                    response: httpx.Response | None = client.post(sent.path, json=body)
                except httpx.HTTPError:
                    response = None
                sent.spans.append((sent.began, time.perf_counter()))
                sent.began = None
                sent.answers[sent.answered(response)] += 1

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=0)


# --- the hostile connections ---------------------------------------------------------------------


class HostileConnections:
    """Idle and half-sent connections to ``port``, held open (reopened when closed) in a
    thread until :meth:`stop`."""

    def __init__(self, port: int, idle: int, half_sent: int) -> None:
        self.port = port
        self.wanted = {"idle": idle, "half-sent": half_sent}
        self.reopened = 0
        #: when (``perf_counter``) each connection the gateway closed was opened again
        self.reopened_at: list[float] = []
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, name="hostile", daemon=True)

    def _open(self, kind: str) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        if kind == "half-sent":
            sock.send(HALF_SENT)
        self._selector.register(sock, selectors.EVENT_READ, kind)

    def start(self) -> None:
        for kind, count in self.wanted.items():
            for _ in range(count):
                self._open(kind)
        self._thread.start()

    def _hold(self) -> None:
        next_byte = time.monotonic() + 1
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    closed = not sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    closed = True
                if closed:  # the gateway closed it (or answered it 408): open another
                    self._selector.unregister(sock)
                    sock.close()
                    self.reopened += 1
                    self.reopened_at.append(time.perf_counter())
                    self._open(key.data)
            if time.monotonic() >= next_byte:
                next_byte += 1
                for key in list(self._selector.get_map().values()):
                    if key.data == "half-sent":
                        with contextlib.suppress(OSError):  # seen closed by the next select
                            key.fileobj.send(b"X")  # type: ignore[union-attr]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
