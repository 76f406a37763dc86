"""The vLLM OpenAI-compatible server, over httpx.

Responses are validated against the shape detserve relies on (pydantic, strict types); anything
else is a :class:`ServerError`, never a half-read result.

Retry policy
------------
A request is sent at most ``1 + retries`` times (``retries`` defaults to 3), waiting
``backoff_s * 2**n`` seconds (0.5 s, 1 s, 2 s by default) before retry ``n + 1``. Retried:

* a connection that cannot be made or breaks (``httpx.TransportError``: refused, reset, closed
  early) and a timeout;
* HTTP 500, 502, 503 and 504 (an engine restarting or overloaded, a proxy in between).

Never retried: any 4xx (the request is wrong: retrying cannot help) and a 2xx whose body is not
the expected JSON (a broken server: retrying would hide it). Retrying is safe because detserve
only sends greedy requests with a fixed seed: the same request gives the same tokens, so a
repeated request cannot change a result, only repeat it. When a request times out, httpx closes
the connection and vLLM aborts the request on disconnect, so the retry does not run beside it.
Pass ``retries=0`` to send each request exactly once. ``health()`` never retries: callers that
wait for a server poll it themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import ConfigDict, Field, ValidationError

from detserve.errors import RequestRefused, ServerError
from detserve.spelled_json import encode_body
from detserve.strict_model import StrictModel

RETRY_STATUS = frozenset({500, 502, 503, 504})
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.5
DEFAULT_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 5.0
_BODY_SHOWN = 300


# --- what the server must answer (extra fields are the server's business) --------------------


class _Shape(StrictModel):
    # what the server adds beyond these fields is its business, not a refusal
    model_config = ConfigDict(extra="ignore")


ShapeT = TypeVar("ShapeT", bound=_Shape)


class _ModelCard(_Shape):
    id: str
    root: str | None = None


class _ModelList(_Shape):
    data: list[_ModelCard]


class _Version(_Shape):
    version: str


class _Logprobs(_Shape):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None = None


class _Choice(_Shape):
    text: str
    finish_reason: str | None
    token_ids: list[int]
    prompt_token_ids: list[int] | None = None
    logprobs: _Logprobs | None = None


class _CompletionResponse(_Shape):
    model: str
    choices: list[_Choice] = Field(min_length=1, max_length=1)
    prompt_token_ids: list[int] | None = None


class _ChatTopLogprob(_Shape):
    token: str
    logprob: float


class _ChatTokenLogprob(_Shape):
    token: str
    logprob: float | None
    top_logprobs: list[_ChatTopLogprob] = Field(default_factory=list)


class _ChatLogprobs(_Shape):
    content: list[_ChatTokenLogprob] | None


class _ChatMessage(_Shape):
    content: str | None


class _ChatChoice(_Shape):
    message: _ChatMessage
    finish_reason: str | None
    token_ids: list[int]
    logprobs: _ChatLogprobs | None = None


class _ChatResponse(_Shape):
    model: str
    choices: list[_ChatChoice] = Field(min_length=1, max_length=1)
    prompt_token_ids: list[int] | None = None


# --- typed results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """One entry of ``/v1/models``: the name served and what it was loaded from."""

    id: str
    root: str | None


@dataclass(frozen=True)
class TokenLogprob:
    """The log probability of one generated token, and the top alternatives when asked."""

    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Completion:
    """One greedy completion, as the server returned it."""

    model: str
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None
    logprobs: tuple[TokenLogprob, ...] | None
    #: the response body as parsed JSON, for the record
    response: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _show_body(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text if len(text) <= _BODY_SHOWN else text[:_BODY_SHOWN] + "..."


def _engine_message(response: httpx.Response) -> str:
    """The server's own words for a refusal: vLLM's ``error.message``, else the body."""
    try:
        data = response.json()
    except ValueError:
        return _show_body(response)
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else _show_body(response)


def _validation_lines(exc: ValidationError) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error['loc']) or '(body)'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    ]


def completion_body(
    prompt: str | Sequence[int],
    max_tokens: int,
    seed: int,
    logprobs: int | None = None,
    *,
    model: str | None = None,
) -> dict[str, Any]:
    """The exact body of a strict completion request: greedy, seeded, one choice, token ids."""
    body: dict[str, Any] = {
        "prompt": prompt if isinstance(prompt, str) else list(prompt),
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": seed,
        "n": 1,
        "stream": False,
        "return_token_ids": True,
    }
    if model is not None:
        body["model"] = model
    if logprobs is not None:
        body["logprobs"] = logprobs
    return body


class VllmServer:
    """A client of one vLLM OpenAI-compatible server, e.g. ``http://127.0.0.1:8000``."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            # never pick up a proxy from the environment for a loopback server
            trust_env=False,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- transport and retries ---------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        retry: bool = True,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        url = f"{self.base_url}{path}"
        attempts = 1 + (self.retries if retry else 0)
        extra: dict[str, Any] = {}
        if timeout_s is not None:
            extra["timeout"] = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        # the body's bytes as built, a constraint's JSON text embedded as it is
        content: dict[str, Any] = (
            {}
            if body is None
            else {"content": encode_body(body), "headers": {"Content-Type": "application/json"}}
        )
        failure = ""
        cause: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.request(method, path, **content, **extra)
            except httpx.TimeoutException as exc:
                failure, cause = f"timed out ({type(exc).__name__})", exc
                continue
            except httpx.TransportError as exc:
                failure, cause = f"connection failed: {exc or type(exc).__name__}", exc
                continue
            if response.status_code in RETRY_STATUS:
                failure, cause = f"HTTP {response.status_code}: {_show_body(response)}", None
                continue
            if response.status_code >= 400:
                raise RequestRefused(
                    f"{method} {url} was refused: HTTP {response.status_code}",
                    details=[_show_body(response)] if response.text.strip() else [],
                    status=response.status_code,
                    engine_message=_engine_message(response),
                )
            return response
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        raise ServerError(f"{method} {url}: {failure}{tries}") from cause

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise ServerError(
                f"malformed response from {response.request.method} {response.request.url}: "
                "not JSON",
                details=[_show_body(response)],
            ) from exc

    def _parse(self, response: httpx.Response, shape: type[ShapeT]) -> tuple[ShapeT, Any]:
        """The body validated against ``shape``, and the body as parsed JSON."""
        data = self._json(response)
        try:
            return shape.model_validate(data), data
        except ValidationError as exc:
            raise ServerError(
                f"unexpected response from {response.request.method} {response.request.url}",
                details=_validation_lines(exc),
            ) from exc

    # --- endpoints ------------------------------------------------------------------------------

    def health(self) -> None:
        """Return when ``GET /health`` answers 200; raise :class:`ServerError` otherwise."""
        response = self._send("GET", "/health", retry=False, timeout_s=HEALTH_TIMEOUT_S)
        if response.status_code != 200:
            raise ServerError(f"GET {self.base_url}/health: HTTP {response.status_code}")

    def models(self) -> list[ServedModel]:
        """The models the server answers to (``/v1/models``): served name and ``root``."""
        parsed, _ = self._parse(self._send("GET", "/v1/models"), _ModelList)
        return [ServedModel(id=card.id, root=card.root) for card in parsed.data]

    def version(self) -> str:
        """The vLLM version the server reports (``GET /version``)."""
        parsed, _ = self._parse(self._send("GET", "/version"), _Version)
        return parsed.version

    def complete(
        self,
        prompt: str | Sequence[int],
        max_tokens: int,
        seed: int,
        logprobs: int | None = None,
        *,
        model: str | None = None,
    ) -> Completion:
        """One greedy completion (``temperature: 0``) with token ids and, when asked, logprobs."""
        return self._completion(
            completion_body(prompt, max_tokens, seed, logprobs, model=model or self.model)
        )

    def _completion(self, body: Mapping[str, Any]) -> Completion:
        logprobs = body.get("logprobs")
        response = self._send("POST", "/v1/completions", body=body)
        parsed, data = self._parse(response, _CompletionResponse)
        choice = parsed.choices[0]
        where = f"POST {self.base_url}/v1/completions"
        prompt_ids = (
            choice.prompt_token_ids
            if choice.prompt_token_ids is not None
            else parsed.prompt_token_ids
        )
        if prompt_ids is None:
            raise ServerError(
                f"unexpected response from {where}: no prompt_token_ids",
                hint="the server must support 'return_token_ids' (vLLM >= 0.10.2)",
            )
        token_logprobs = None
        if logprobs is not None:
            token_logprobs = self._token_logprobs(choice, where)
        return Completion(
            model=parsed.model,
            prompt_token_ids=tuple(prompt_ids),
            token_ids=tuple(choice.token_ids),
            text=choice.text,
            finish_reason=choice.finish_reason,
            logprobs=token_logprobs,
            response=data,
        )

    def generate(self, path: str, body: Mapping[str, Any]) -> Completion:
        """Send a request body built elsewhere (:mod:`detserve.request_kinds`) to
        ``/v1/completions`` or ``/v1/chat/completions`` and read either answer the same way."""
        if path == "/v1/completions":
            return self._completion(body)
        if path != "/v1/chat/completions":
            raise ValueError(f"not a generation endpoint: {path}")
        where = f"POST {self.base_url}{path}"
        parsed, data = self._parse(self._send("POST", path, body=body), _ChatResponse)
        choice = parsed.choices[0]
        if parsed.prompt_token_ids is None:
            raise ServerError(
                f"unexpected response from {where}: no prompt_token_ids",
                hint="the server must support 'return_token_ids' (vLLM >= 0.10.2)",
            )
        token_logprobs = None
        if body.get("logprobs"):
            content = choice.logprobs.content if choice.logprobs is not None else None
            if content is None or len(content) != len(choice.token_ids):
                raise ServerError(
                    f"unexpected response from {where}: logprobs do not line up with the tokens"
                )
            token_logprobs = tuple(
                TokenLogprob(
                    token=item.token,
                    logprob=item.logprob,
                    top=tuple((top.token, top.logprob) for top in item.top_logprobs),
                )
                for item in content
            )
        return Completion(
            model=parsed.model,
            prompt_token_ids=tuple(parsed.prompt_token_ids),
            token_ids=tuple(choice.token_ids),
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            logprobs=token_logprobs,
            response=data,
        )

    @staticmethod
    def _token_logprobs(choice: _Choice, where: str) -> tuple[TokenLogprob, ...]:
        if choice.logprobs is None:
            raise ServerError(f"unexpected response from {where}: logprobs were asked, none came")
        lp = choice.logprobs
        tops = lp.top_logprobs if lp.top_logprobs is not None else [None] * len(lp.tokens)
        if not (len(lp.tokens) == len(lp.token_logprobs) == len(tops) == len(choice.token_ids)):
            raise ServerError(
                f"unexpected response from {where}: logprobs do not line up with the tokens",
                details=[
                    f"token_ids {len(choice.token_ids)}, tokens {len(lp.tokens)}, "
                    f"token_logprobs {len(lp.token_logprobs)}, top_logprobs {len(tops)}"
                ],
            )
        return tuple(
            TokenLogprob(token=token, logprob=value, top=tuple((top or {}).items()))
            for token, value, top in zip(lp.tokens, lp.token_logprobs, tops, strict=True)
        )


def status_of(base_url: str) -> tuple[str, tuple[ServedModel, ...]]:
    """What ``detserve status`` says of the server at ``base_url``, asked once with a short
    timeout: ``"ok"`` and the models it serves, or ``"not ready: …"`` and none."""
    with VllmServer(base_url, timeout_s=5, retries=0) as server:
        try:
            server.health()
            return "ok", tuple(server.models())
        except ServerError as exc:
            return f"not ready: {exc.message}", ()
