"""The bytes the engine is sent for a canonical request: one function, for the gateway and its
replay, so that a replay sends what was sent.

The body is built from the recorded request alone (:class:`~detserve.runlog.ExchangeRequest`),
the model and the seed being the pins': greedy, seeded, one choice, token ids returned, never a
chat template or any of its options; a constraint field is embedded as its recorded JSON text
(:class:`~detserve.spelled_json.JSONText`), key order and number spellings as the client sent
them. The only difference between a streamed exchange's body and its replay's is ``stream``.
"""

from __future__ import annotations

from typing import Any

from detserve.constraints import CONSTRAINT_FIELDS
from detserve.runlog.models import ExchangeRequest
from detserve.spelled_json import JSONText, encode_body


def upstream_request(
    request: ExchangeRequest, *, model: str, seed: int, stream: bool
) -> tuple[str, bytes]:
    """The engine's endpoint and the exact bytes sent there for a canonical request."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "temperature": 0,
        "seed": seed,
        "n": 1,
        "stream": stream,
        "return_token_ids": True,
    }
    if request.stop is not None:
        body["stop"] = list(request.stop)
    for name in CONSTRAINT_FIELDS:
        text = getattr(request, name)
        if text is not None:
            body[name] = JSONText(text)
    if request.messages is not None:
        body["messages"] = [message.model_dump() for message in request.messages]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = request.prompt
        path = "/v1/completions"
    return path, encode_body(body)
