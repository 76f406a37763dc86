"""The gateway's OpenAPI document: what it serves, what the documentation holds, and that it
says what admission does.

The document is built from admission's own definitions (:mod:`detserve.gateway.request_schema`),
so most drift cannot be written; these tests hold the rest: the committed
``docs/reference/gateway-openapi.json`` is the generated one; a gateway serves its own at
``/openapi.json`` behind the same rules as the API; every route, and every status in OpenAI's
error shape, is documented; the document's examples are admitted, and bodies it calls invalid
are refused naming the field (with its one documented difference: an integer spelled ``4.0``).
Schemathesis fuzzes a live gateway against it in ``test_gateway_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jsonschema
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from detserve.gateway.admission import (
    ACCEPTED_FIELDS,
    REFUSED_FIELDS,
    Policy,
    Refused,
    admit,
    compile_constraint,
    parse_body,
)
from detserve.gateway.openapi import openapi_document
from detserve.profile import load_profile

from .committed import REPO_ROOT, TINY_CONFIG, TinyWorkspace
from .gateway_rig import Fixture, GatewayRig, StreamingFakeVllm, running_gateway

DOCUMENT = REPO_ROOT / "docs" / "reference" / "gateway-openapi.json"
MODEL = "tiny-llama"
KEY = "openapi-key-0123456789"
POLICY = Policy.of_profile(load_profile(TINY_CONFIG).profile)
#: the request body's schema per kind, by its name in the document
BODY = {"completion": "CompletionRequest", "chat": "ChatCompletionRequest"}


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "openapi_document", REPO_ROOT / "scripts" / "openapi_document.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keyed(tiny_workspace: TinyWorkspace, tmp_path: Path) -> Iterator[GatewayRig]:
    fixture = Fixture(
        workspace=tiny_workspace, transcripts=tmp_path / "transcripts", options={"api_key": KEY}
    )
    yield from running_gateway(fixture, StreamingFakeVllm())


def body_validator(document: dict[str, Any], kind: str) -> jsonschema.Draft202012Validator:
    """The document's request body schema, its references resolved in the document."""
    root = {"$ref": f"#/components/schemas/{BODY[kind]}", "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


def admitted(kind: str, body: dict[str, Any]) -> None:
    """Admit ``body`` as the gateway does, its constraint compiled; raise :class:`Refused`."""
    raw = json.dumps(body).encode("utf-8")
    asyncio.run(compile_constraint(admit(kind, parse_body(raw), POLICY)))


# --- the document -----------------------------------------------------------------------------


def test_the_committed_document_is_the_generated_one(generator: ModuleType) -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == generator.document(), (
        "docs/reference/gateway-openapi.json is stale: run `make schemas` and commit it"
    )


@pytest.mark.parametrize("with_key", [False, True])
def test_the_document_is_openapi_3_1_and_its_schemas_json_schema(with_key: bool) -> None:
    document = openapi_document(POLICY, keyed=with_key)
    OPENAPI_31_VALIDATOR.validate(document)
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("with_key", [False, True])
def test_every_4xx_and_5xx_is_documented_in_openai_s_error_shape(with_key: bool) -> None:
    document = openapi_document(POLICY, keyed=with_key)
    responses = document["components"]["responses"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            # the connection layer's refusals and an unexpected error can meet any request
            assert {"400", "403", "405", "408", "431", "500", "503"} <= statuses, (path, method)
            assert ("401" in statuses) == (with_key and path != "/health"), (path, method)
            assert ("security" in operation) == (with_key and path != "/health")
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                if "$ref" in response:
                    response = responses[response["$ref"].rsplit("/", 1)[1]]
                schema = response["content"]["application/json"]["schema"]
                if path == "/health" and status == "503":  # the health document, and its error
                    assert schema["anyOf"][1] == {"$ref": "#/components/schemas/Error"}
                    assert {"required": ["error"]}.items() <= schema["anyOf"][0]["allOf"][1].items()
                else:
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_the_documented_fields_are_those_admission_accepts(kind: str) -> None:
    schema = openapi_document(POLICY, keyed=False)["components"]["schemas"][BODY[kind]]
    assert set(schema["properties"]) == ACCEPTED_FIELDS[kind]
    assert schema["additionalProperties"] is False
    assert not set(schema["properties"]) & set(REFUSED_FIELDS)


def test_without_a_structured_outputs_backend_only_text_is_documented() -> None:
    unpinned = Policy(
        served_model_name=MODEL,
        seed=0,
        default_max_tokens=8,
        max_model_len=64,
        structured_outputs_pinned=False,
    )
    document = openapi_document(unpinned, keyed=False)
    validator = body_validator(document, "completion")
    assert validator.is_valid({"model": MODEL, "prompt": "p", "response_format": {"type": "text"}})
    for constraint in (
        {"response_format": {"type": "json_object"}},
        {"structured_outputs": {"regex": "a+"}},
    ):
        body = {"model": MODEL, "prompt": "p", **constraint}
        assert not validator.is_valid(body)
        with pytest.raises(Refused):
            admit("completion", parse_body(json.dumps(body).encode()), unpinned)


# --- served -----------------------------------------------------------------------------------


def test_the_gateway_serves_its_document_and_documents_every_route(rig: GatewayRig) -> None:
    served = httpx.get(f"{rig.url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    assert served.json() == openapi_document(rig.gateway.policy, keyed=False)
    routes = {route.path for route in rig.gateway.starlette.routes}  # type: ignore[attr-defined]
    assert set(served.json()["paths"]) == routes
    foreign = httpx.get(
        f"{rig.url}/openapi.json", headers={"Origin": "http://attacker.example"}, timeout=10
    )
    assert foreign.status_code == 403
    assert foreign.json()["error"]["type"] == "invalid_request_error"


def test_the_document_is_behind_the_api_key(keyed: GatewayRig) -> None:
    refused = httpx.get(f"{keyed.url}/openapi.json", timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    served = httpx.get(
        f"{keyed.url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert served.status_code == 200
    assert served.json() == openapi_document(keyed.gateway.policy, keyed=True)


# --- what it says is what admission does ------------------------------------------------------


def _examples(kind: str) -> list[tuple[str, dict[str, Any]]]:
    document = openapi_document(POLICY, keyed=False)
    path = "/v1/completions" if kind == "completion" else "/v1/chat/completions"
    content = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return [(name, example["value"]) for name, example in content["examples"].items()]


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_the_documented_examples_are_valid_and_admitted(kind: str) -> None:
    examples = _examples(kind)
    assert {name for name, _ in examples} == {"whole", "streamed", "constrained"}
    validator = body_validator(openapi_document(POLICY, keyed=False), kind)
    for name, body in examples:
        validator.validate(body)
        admitted(kind, body)  # raises Refused otherwise
        assert name != "streamed" or body["stream"] is True


#: bodies the document calls invalid, and the field admission's refusal names
INVALID: list[tuple[str, dict[str, Any], str | None]] = [
    ("completion", {"prompt": ""}, "prompt"),
    ("completion", {"prompt": ["a", "b"]}, "prompt"),
    ("completion", {"prompt": "p", "model": "another"}, "model"),
    ("completion", {"prompt": "p", "max_tokens": 0}, "max_tokens"),
    ("completion", {"prompt": "p", "max_tokens": 512}, "max_tokens"),
    ("completion", {"prompt": "p", "temperature": 0.5}, "temperature"),
    ("completion", {"prompt": "p", "seed": 1}, "seed"),
    ("completion", {"prompt": "p", "n": 2}, "n"),
    ("completion", {"prompt": "p", "stream": "yes"}, "stream"),
    ("completion", {"prompt": "p", "stop": []}, "stop"),
    ("completion", {"prompt": "p", "stop": [""]}, "stop"),
    ("completion", {"prompt": "p", "stop": ["s"] * 17}, "stop"),
    ("completion", {"prompt": "p", "stop": ["s" * 257]}, "stop"),
    ("completion", {"prompt": "p", "top_p": 0.9}, "top_p"),
    ("completion", {"prompt": "p", "unknown": 1}, "unknown"),
    ("completion", {"prompt": "p", "messages": []}, "messages"),
    ("completion", {"prompt": "p", "response_format": {"type": "json_object", "x": 1}},
     "response_format.x"),
    ("completion", {"prompt": "p", "response_format": {"type": "json_schema", "json_schema": {
        "name": "a b", "schema": {}}}}, "response_format.json_schema.name"),
    ("completion", {"prompt": "p", "response_format": {"type": "json_schema", "json_schema": {
        "name": "a", "schema": {}, "strict": False}}}, "response_format.json_schema.strict"),
    ("completion", {"prompt": "p", "structured_outputs": {"regex": "a", "choice": ["a"]}},
     "structured_outputs"),
    ("completion", {"prompt": "p", "structured_outputs": {"choice": ["a", "a"]}},
     "structured_outputs.choice"),
    ("completion", {"prompt": "p", "structured_outputs": {"json_object": False}},
     "structured_outputs.json_object"),
    ("completion", {"prompt": "p", "structured_outputs": {"regex": ""}},
     "structured_outputs.regex"),
    # a null beside the other constraint field is not left out
    ("completion", {"prompt": "p", "response_format": None, "structured_outputs": {"regex": "a"}},
     "structured_outputs"),
    ("chat", {"messages": []}, "messages"),
    ("chat", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ("chat", {"messages": [{"role": "user", "content": "x", "name": "n"}]}, "messages[0]"),
    ("chat", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "max_tokens": None,
              "max_completion_tokens": 4}, "max_completion_tokens"),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "prompt": "p"}, "prompt"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "body", "param"), INVALID)
def test_documented_invalid_bodies_are_refused_naming_the_field(
    kind: str, body: dict[str, Any], param: str | None
) -> None:
    body = {"model": MODEL, **body}
    assert not body_validator(openapi_document(POLICY, keyed=False), kind).is_valid(body)
    with pytest.raises(Refused) as refused:
        admitted(kind, body)
    assert refused.value.status == 400
    assert refused.value.param == param


@pytest.mark.parametrize("field", ["max_tokens", "seed", "n"])
def test_the_one_documented_difference_an_integer_spelled_as_a_float(field: str) -> None:
    """JSON's data model (and so JSON Schema) calls ``4.0`` the integer 4; admission refuses
    the respelling by name (no two requests share a record). test_gateway_fuzz allows exactly
    this refusal of a body the document calls valid."""
    value = {"max_tokens": 4.0, "seed": float(POLICY.seed), "n": 1.0}[field]
    body = {"model": MODEL, "prompt": "p", field: value}
    assert body_validator(openapi_document(POLICY, keyed=False), "completion").is_valid(body)
    with pytest.raises(Refused) as refused:
        admitted("completion", body)
    assert refused.value.param == field
