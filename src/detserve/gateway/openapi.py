"""The gateway's OpenAPI document (3.1): every route, request body and status, as served.

A gateway serves its own document at ``GET /openapi.json`` (behind the same API key and Host and
Origin rules as every route but ``/health``), built once from its pins by :func:`openapi_document`;
``scripts/openapi_document.py`` writes the one of the default profile into the documentation
(``docs/reference/gateway-openapi.json``), and Schemathesis fuzzes a live gateway against it in
the unit tests (``tests/unit/test_gateway_fuzz.py``).

Invariants:

* every route is described (:data:`~detserve.gateway.guards.ROUTES` and ``/openapi.json``), the
  completions' ``stream: true`` answer as ``text/event-stream`` beside the whole one;
* the request bodies are :mod:`~detserve.gateway.request_schema`'s, built from admission's own
  definitions and the gateway's pins;
* every status a route can answer is listed, each 4xx and 5xx in OpenAI's error shape
  (:data:`ERROR_SCHEMA`, ``{"error": {"message", "type", "param", "code"}}``), ``/health``'s
  503 included (its document holds the ``error`` beside the health fields); the connection
  layer's own refusals (:mod:`~detserve.gateway.connections`: 400 for what is not HTTP, 408, 431,
  503) are listed on every operation, since any request can meet them;
* with an API key every operation but ``/health`` requires ``Authorization: Bearer KEY`` (401
  otherwise); without one, no operation names a security scheme.
"""

from __future__ import annotations

from typing import Any, Final

from detserve._version import __version__
from detserve.gateway.admission import Policy
from detserve.gateway.request_schema import RequestKind, request_examples, request_schemas

#: the media type of a streamed answer
EVENT_STREAM: Final = "text/event-stream"
_ERROR_STATUSES: Final = {
    400: "refused: the request (its field named in error.param) or, from the connection layer, "
    "not an HTTP request the gateway reads",
    401: "a valid API key is required (Authorization: Bearer KEY)",
    403: "a Host that does not name this gateway, or a foreign Origin (a web page)",
    404: "no such route or exchange",
    405: "the method is not allowed on this route",
    408: "the request's headers (10 s) or body (30 s) did not arrive in time",
    413: "the body is larger than the limit (2 MiB)",
    415: "the body is not sent as Content-Type: application/json (UTF-8)",
    429: "the gateway's queue is full; retry after Retry-After seconds",
    431: "the request's line and headers exceed 64 KiB",
    500: "an unexpected error; the gateway is unhealthy (503) until its next check passes",
    502: "the engine did not answer, failed, or its output violates the request's constraint "
    "(code constraint_violated: recorded and withheld)",
    503: "the gateway does not answer: unhealthy (the reason), or too many connections",
}
#: OpenAI's error shape, the body of every 4xx and 5xx
ERROR_SCHEMA: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "enum": ["invalid_request_error", "server_error"]},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_SHA256: Final = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_PROVENANCE: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        *("id", "pins_sha256", "request_sha256", "output_sha256", "transcript", "segment"),
        *("index", "complete", "incomplete", "delivery", "constraint", "constraint_check"),
    ],
    "properties": {
        "id": {"type": "string"},
        "pins_sha256": _SHA256,
        "request_sha256": _SHA256,
        "output_sha256": _SHA256,
        "transcript": {"type": "string"},
        "segment": {"type": "integer", "minimum": 0},
        "index": {"type": "integer", "minimum": 0},
        "complete": {"type": "boolean"},
        "incomplete": {"type": ["string", "null"]},
        "delivery": {"type": "string"},
        "constraint": {"type": ["string", "null"]},
        "constraint_check": {"type": ["string", "null"]},
    },
}
_HEALTH: Final = {
    "type": "object",
    "required": ["status", "reason", "pins", "seed", "pins_sha256", "container", "upstream"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "reason": {"type": ["string", "null"]},
        "pins": {"type": "object"},
        "seed": {"type": "integer"},
        "pins_sha256": _SHA256,
        "container": {"type": "object"},
        "snapshot_verified_at": {"type": "string"},
        "snapshot_watch": {
            "type": "object",
            "description": "How soon the snapshot's checks catch a change, as now measured: "
            "record_check_bound_s (through the file system; null where no record is kept), "
            "paced_pass_s (below it), and the share of one core they are held to.",
            "properties": {
                "record_check_bound_s": {"type": ["number", "null"]},
                "paced_pass_s": {"type": ["number", "null"]},
                "cpu_share": {"type": "number"},
            },
        },
        "transcript": {"type": "string"},
        "concurrency": {"type": "integer", "minimum": 1},
        "upstream": {"type": "string"},
        "error": ERROR_SCHEMA["properties"]["error"],  # type: ignore[index]
    },
}
_MODEL_LIST: Final = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "object", "owned_by", "root"],
                "properties": {"id": {"type": "string"}, "root": {"type": "string"}},
            },
        },
    },
}
#: one server-sent event of a stream (OpenAPI 3.1: the schema of each event): a chunk as vLLM
#: streams it (the final one holds ``detserve``), an error in OpenAI's shape (the stream cannot
#: go on), or ``[DONE]``
_STREAM_EVENT: Final = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "anyOf": [
                {"type": "string", "enum": ["[DONE]"]},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [
                            {
                                "type": "object",
                                "required": ["id", "object", "created", "model", "choices"],
                                "not": {"required": ["error"]},
                                "properties": {
                                    "choices": {"type": "array", "minItems": 1, "maxItems": 1},
                                    "detserve": {"$ref": "#/components/schemas/Provenance"},
                                },
                            },
                            {"$ref": "#/components/schemas/Error"},
                        ]
                    },
                },
            ]
        }
    },
}
_ANSWER_HEADERS: Final = {
    name: {"description": description, "schema": {"type": "string"}}
    for name, description in (
        ("X-Detserve-Id", "the exchange's id (GET /v1/provenance/{id})"),
        ("X-Detserve-Pins-Sha256", "the pins' and seed's sha256"),
        ("X-Detserve-Request-Sha256", "the canonical request's sha256"),
        ("X-Detserve-Output-Sha256", "the output's sha256 (a whole answer's only)"),
        ("X-Detserve-Constraint-Check", "the output's check, for a constrained request"),
    )
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERROR_STATUSES[status],
        "content": _json(_ref("Error")),
    }
    if status == 429:
        response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
    if status == 405:
        response["headers"] = {"Allow": {"schema": {"type": "string"}}}
    return response


def _errors(*statuses: int) -> dict[str, Any]:
    # the connection layer's refusals, and an unexpected error, can meet any request
    every = {400, 405, 408, 431, 500, 503, *statuses}
    return {str(status): {"$ref": f"#/components/responses/{status}"} for status in sorted(every)}


def _operation(
    summary: str, ok: dict[str, Any], *statuses: int, keyed: bool, **extra: Any
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, **extra}
    operation["responses"] = {"200": ok, **_errors(403, *statuses, *([401] if keyed else []))}
    if keyed:
        operation["security"] = [{"bearer": []}]
    return operation


def _generate(kind: RequestKind, policy: Policy, *, keyed: bool) -> dict[str, Any]:
    schema = "CompletionRequest" if kind == "completion" else "ChatCompletionRequest"
    answer = "Completion" if kind == "completion" else "ChatCompletion"
    ok = {
        "description": "the answer, recorded before it is given: JSON, or with stream: true "
        "server-sent events (the final chunk holds detserve, with the output's sha256)",
        "headers": _ANSWER_HEADERS,
        "content": {
            **_json({"$ref": f"#/components/schemas/{answer}"}),
            EVENT_STREAM: {"schema": _ref("StreamEvent")},
        },
    }
    return _operation(
        f"a {'completion' if kind == 'completion' else 'chat completion'}, recorded",
        ok,
        *(413, 415, 429, 502),
        keyed=keyed,
        requestBody={
            "required": True,
            "content": {
                "application/json": {
                    "schema": _ref(schema),
                    "examples": request_examples(kind, policy),
                }
            },
        },
    )


def _answer_schema(kind: str) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "type": "object",
        "required": ["index", "finish_reason", "token_ids"],
        "properties": {
            "index": {"type": "integer"},
            "finish_reason": {"type": ["string", "null"]},
            "token_ids": {"type": "array", "items": {"type": "integer"}},
        },
    }
    if kind == "completion":
        choice["required"].append("text")
        choice["properties"]["text"] = {"type": "string"}
    else:
        choice["required"].append("message")
        choice["properties"]["message"] = {
            "type": "object",
            "required": ["role", "content"],
            "properties": {"role": {"type": "string"}, "content": {"type": ["string", "null"]}},
        }
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "detserve"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": choice},
            "detserve": {"$ref": "#/components/schemas/Provenance"},
        },
    }


def openapi_document(policy: Policy, *, keyed: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a gateway admitting against ``policy``; ``keyed``: it has an
    API key (every operation but ``/health`` needs it)."""
    text = {"200": {"description": "the document", "content": _json({"type": "object"})}}
    ok_models = {"description": "the served model", "content": _json(_MODEL_LIST)}
    health = {"content": _json({"$ref": "#/components/schemas/Health"})}
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "whether the gateway answers (never behind the API key)",
                "responses": {
                    "200": {"description": "ok: the pins and the container", **health},
                    **_errors(403),
                    "503": {
                        "description": "unavailable (the reason, and error in OpenAI's shape), "
                        "or too many connections",
                        "content": _json({"anyOf": [_health_unavailable(), _ref("Error")]}),
                    },
                },
            }
        },
        "/v1/models": {"get": _operation("the served model", ok_models, keyed=keyed)},
        "/v1/completions": {"post": _generate("completion", policy, keyed=keyed)},
        "/v1/chat/completions": {"post": _generate("chat", policy, keyed=keyed)},
        "/v1/provenance/{exchange_id}": {
            "get": _operation(
                "an exchange's provenance, from this gateway's transcripts",
                {"description": "its provenance", "content": _json(_ref("Provenance"))},
                404,
                keyed=keyed,
                parameters=[
                    {
                        "name": "exchange_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/metrics": {
            "get": _operation(
                "the gateway's metrics (Prometheus' text format), answered while unhealthy too",
                {"description": "the metrics", "content": {"text/plain": {"schema": {}}}},
                keyed=keyed,
            )
        },
        "/openapi.json": {
            "get": _operation("this document", text["200"], keyed=keyed),
        },
    }
    components: dict[str, Any] = {
        "schemas": {
            "Error": ERROR_SCHEMA,
            "Provenance": _PROVENANCE,
            "Health": _HEALTH,
            "StreamEvent": _STREAM_EVENT,
            "Completion": _answer_schema("completion"),
            "ChatCompletion": _answer_schema("chat"),
            **request_schemas(policy),
        },
        "responses": {str(status): _error_response(status) for status in _ERROR_STATUSES},
    }
    if keyed:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "detserve gateway",
            "version": __version__,
            "description": (
                "An OpenAI-compatible gateway whose every answer is recorded as a replayable "
                f"claim, serving {policy.served_model_name!r} with seed {policy.seed}. Every 4xx "
                "and 5xx is in OpenAI's error shape; nothing is ever redirected."
            ),
        },
        "paths": paths,
        "components": components,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _health_unavailable() -> dict[str, Any]:
    return {
        "allOf": [
            _ref("Health"),
            {"required": ["error"], "properties": {"status": {"enum": ["unavailable"]}}},
        ]
    }
