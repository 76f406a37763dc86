"""A gateway in front of a fake vLLM that streams, on real sockets, for the gateway's tests.

The fake answers ``/v1/completions`` and ``/v1/chat/completions`` as vLLM does with
``return_token_ids`` (token ids in every choice, the prompt's ids on the first chunk of a
stream, at the top level for a chat; a chat stream opens with a chunk of the role and no token,
as vLLM 0.32 streams it), streamed as chunked server-sent events when asked, and
can be told to stream slowly or drop the connection mid-stream (a killed engine). The gateway
runs under uvicorn in a thread (:class:`~detserve.gateway.listener.GatewayServer`), verified
against a copy of the tiny model and a fake engine holding the profile's container.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

from detserve import api
from detserve.gateway.app import Gateway
from detserve.gateway.connections import ConnectionLimits
from detserve.gateway.listener import GatewayServer
from detserve.profile import load_profile
from detserve.runtime.container_spec import build_container_spec

from .committed import TinyWorkspace
from .containers import faithful_container, pinned_image
from .fake_http import Answer, serving
from .test_sampling_faults import IMAGE, SERVED_NAME, FakeEngine


def tokens_of(text: str, count: int) -> list[int]:
    digest = hashlib.sha256(text.encode()).digest()
    return [digest[i % 32] + 3 for i in range(count)]


@dataclass
class StreamingFakeVllm:
    """vLLM's answers, derived from the prompt; what it was asked; how it misbehaves."""

    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: the exact bytes of each POST body, in the order they arrived
    bodies: list[bytes] = field(default_factory=list)
    #: seconds between two streamed events
    event_delay_s: float = 0.0
    #: drop a stream's connection after this many events
    drop_after: int | None = None
    #: seconds before a whole answer
    delay_s: float = 0.0
    #: the pieces of text (one a token) the engine answers, ending with "stop" when they fit in
    #: max_tokens; None: pieces derived from the prompt, always cut by max_tokens ("length")
    pieces: list[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _prompt(self, path: str, body: dict[str, Any]) -> str:
        if path == "/v1/chat/completions":
            return json.dumps(body["messages"], sort_keys=True)
        return str(body["prompt"])

    def answer(self, method: str, path: str, body: Any) -> Answer:
        if method == "GET" and path == "/v1/models":
            return Answer(body={"data": [{"id": SERVED_NAME, "root": "detserve/tiny-llama"}]})
        if method == "GET" and path == "/version":
            return Answer(body={"version": "0.32.0"})
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            return Answer(404, {"error": f"no route {method} {path}"})
        with self.lock:
            self.requests.append((path, body))
        prompt = self._prompt(path, body)
        prompt_ids = tokens_of("prompt:" + prompt, 1 + len(prompt) % 7)
        if self.pieces is None:
            tokens = tokens_of(prompt, body["max_tokens"])
            pieces = [f" t{token}" for token in tokens]
            finish = "length"
        else:
            pieces = self.pieces[: body["max_tokens"]]
            tokens = tokens_of(prompt, len(pieces))
            finish = "stop" if len(self.pieces) <= body["max_tokens"] else "length"
        chat = path == "/v1/chat/completions"
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "token_ids": tokens}
            if chat:
                choice["message"] = {"role": "assistant", "content": "".join(pieces)}
                document = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1}
                document |= {"prompt_token_ids": prompt_ids}
            else:
                choice |= {"text": "".join(pieces), "prompt_token_ids": prompt_ids}
                document = {"id": "cmpl-1", "object": "text_completion", "created": 1}
            document |= {"model": body["model"], "choices": [choice]}
            return Answer(body=document, delay_s=self.delay_s)
        events = []
        if chat:
            # vLLM 0.32 opens a chat stream with the role and the prompt's ids, and no token
            role = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
            }
            opening = {"id": "c-1", "object": "chat.completion.chunk", "created": 1}
            opening |= {"model": body["model"], "choices": [role], "prompt_token_ids": prompt_ids}
            events.append(json.dumps(opening))
        for number, (token, piece) in enumerate(zip(tokens, pieces, strict=True)):
            last = number == len(tokens) - 1
            choice = {"index": 0, "token_ids": [token], "finish_reason": finish if last else None}
            chunk: dict[str, Any] = {"id": "c-1", "created": 1, "model": body["model"]}
            if chat:
                choice["delta"] = {"content": piece}
                chunk["object"] = "chat.completion.chunk"
            else:
                choice["text"] = piece
                chunk["object"] = "text_completion"
                if not number:
                    choice["prompt_token_ids"] = prompt_ids
            chunk["choices"] = [choice]
            events.append(json.dumps(chunk))
        events.append("[DONE]")
        return Answer(
            events=tuple(events), event_delay_s=self.event_delay_s, drop_after=self.drop_after
        )


@dataclass
class GatewayRig:
    """A running gateway, its fake engine and server, and where its transcript goes."""

    gateway: Gateway
    server: GatewayServer
    fake: StreamingFakeVllm
    engine: FakeEngine
    workspace: TinyWorkspace
    transcripts: Path

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def stop(self) -> None:
        self.server.stop()


def gateway_profile(workspace: TinyWorkspace, port: int) -> Path:
    document = json.loads(workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = IMAGE
    document["runtime"]["port"] = port
    workspace.config.write_text(json.dumps(document), encoding="utf-8")
    return workspace.config


@dataclass
class Fixture:
    """What a test passes to build its gateway."""

    workspace: TinyWorkspace
    transcripts: Path
    options: dict[str, Any] = field(default_factory=dict)
    #: the server's connection limits (None: the defaults)
    limits: ConnectionLimits | None = None


def running_gateway(fixture: Fixture, fake: StreamingFakeVllm) -> Iterator[GatewayRig]:
    """The gateway, serving until the generator is closed (a fixture's ``yield from``)."""
    with serving(fake.answer, fake.bodies) as port:
        config = gateway_profile(fixture.workspace, port)
        spec = build_container_spec(load_profile(config))
        engine = FakeEngine(faithful_container(spec), pinned_image(spec))
        gateway = api.build_gateway(
            config, transcript_dir=fixture.transcripts, engine=engine, **fixture.options
        )
        server = GatewayServer(gateway, "127.0.0.1", 0, fixture.limits)
        server.start()
        rig = GatewayRig(gateway, server, fake, engine, fixture.workspace, fixture.transcripts)
        try:
            yield rig
        finally:
            server.stop()


#: the same, as a ``with`` block
gateway_running = contextmanager(running_gateway)

JSON = {"Content-Type": "application/json"}


def post_raw(
    rig: GatewayRig, body: bytes, path: str = "/v1/completions", headers: Any = JSON
) -> httpx.Response:
    """``body`` exactly as given (no client re-encoding), to ``path`` of the gateway."""
    return httpx.post(f"{rig.url}{path}", content=body, headers=headers, timeout=60)
