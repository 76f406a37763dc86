"""What the Schemathesis runs against the gateway share, over the fake engine (tests/unit) and
over the real container (tests/integration): the configuration, the document fuzzed, and the
checks beyond Schemathesis' own.

* :func:`config`: a fixed seed, a bounded budget, the stateful phase off (the gateway has no
  resources to create), every stream read to its end, the outputs not sanitised (a field named
  ``*token*`` is no secret here), strings encodable as UTF-8;
* :func:`document`: the document a gateway serving the tiny profile serves (each test requires
  the live gateway to serve exactly it);
* :func:`openai_error_shape`: every 4xx and 5xx is OpenAI's error shape exactly; no redirect; a
  streamed answer ends with ``[DONE]`` and holds no error event (a stream's 5xx);
* :func:`documented_valid_is_admitted`: Schemathesis' ``positive_data_acceptance``, less its
  one documented exception (:data:`INTEGER_FIELDS`);
* :func:`foreign_variants`: the same request from a web page (a foreign ``Origin``) and for a
  foreign ``Host`` (DNS rebinding): 403, documented, in OpenAI's shape.
"""

from __future__ import annotations

from typing import Any, Final

import schemathesis
from hypothesis import strategies as st
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from detserve.gateway.admission import Policy
from detserve.gateway.openapi import openapi_document
from detserve.gateway.request_schema import LARK_FORMAT
from detserve.profile import load_profile

FOREIGN_ORIGIN: Final = "http://attacker.example"
FOREIGN_HOST: Final = "attacker.example"
#: the fields the document types ``integer``; admission refuses one spelled with a fraction
#: (``4.0``), which JSON's data model (and so JSON Schema) calls the integer 4: the one documented
#: difference between the two (refused, not respelled, so that no two requests share a record)
INTEGER_FIELDS: Final = frozenset({"max_tokens", "max_completion_tokens", "seed", "n"})
#: the document's checks of an answer: its status, content type and body
CONFORMANCE: Final = (
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)


def config(*, seed: int, max_examples: int, coverage: bool = True) -> schemathesis.Config:
    """Schemathesis' configuration: the seed, the budget, the phases and the checks."""
    return schemathesis.Config.from_str(
        f"""
seed = {seed}
request-timeout = 60
# every event of a stream is read (the default, 20, leaves it mid-stream): max_model_len 512
max-stream-events = 1024

[output.sanitization]
enabled = false

[generation]
max-examples = {max_examples}
database = "none"
codec = "utf-8"

[phases.coverage]
enabled = {"true" if coverage else "false"}

[phases.stateful]
enabled = false

[checks]
# the gateway creates nothing a later request could use or miss
use_after_free.enabled = false
ensure_resource_availability.enabled = false
object_level_authorization.enabled = false
# replaced by documented_valid_is_admitted, which allows its one documented exception
positive_data_acceptance.enabled = false
"""
    )


def document(profile: Any, *, keyed: bool) -> dict[str, Any]:
    """The document a gateway serving ``profile`` (a path) serves."""
    return openapi_document(Policy.of_profile(load_profile(profile).profile), keyed=keyed)


def _grammars() -> st.SearchStrategy[str]:
    """Lark grammars with a start rule (``format: lark-grammar``): literals and alternatives."""
    literal = st.text(alphabet="abcxyz019 ", min_size=1, max_size=4).map(lambda text: f'"{text}"')
    alternatives = st.lists(literal, min_size=1, max_size=4).map(" | ".join)
    return alternatives.map(lambda body: f"start: {body}\n")


schemathesis.openapi.format(LARK_FORMAT, _grammars())


def assert_error_shape(status: int, body: Any) -> None:
    """``body`` is OpenAI's error shape, exactly, for ``status``."""
    assert isinstance(body, dict), body
    error = body.get("error")
    assert isinstance(error, dict), body
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error"), error
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)


def _stream_events(text: str) -> list[str]:
    return [line[len("data:") :].strip() for line in text.split("\n") if line.startswith("data:")]


@schemathesis.check
def openai_error_shape(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx and 5xx is OpenAI's error shape, exactly; nothing is redirected; a stream
    ends with ``[DONE]`` and holds no error event (its 5xx)."""
    status = response.status_code
    assert not 300 <= status < 400, f"a redirect: {status}"
    if status >= 400:
        assert_error_shape(status, response.json())
    elif "text/event-stream" in (response.headers.get("content-type") or [""])[0]:
        events = _stream_events(response.text)
        assert events[-1:] == ["[DONE]"], events[-3:]
        assert not [event for event in events if event.startswith('{"error"')], events


@schemathesis.check
def documented_valid_is_admitted(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """Schemathesis' ``positive_data_acceptance``, less the one documented exception: an
    integer field spelled as a whole float, refused naming the field."""
    try:
        positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        param = response.json()["error"]["param"] if response.status_code == 400 else None
        value = case.body.get(param) if isinstance(case.body, dict) else None
        if param in INTEGER_FIELDS and isinstance(value, float) and value.is_integer():
            return
        raise


#: the checks every call adds to Schemathesis' own
EXTRA_CHECKS: Final = [openai_error_shape, documented_valid_is_admitted]


def foreign_variants(case: schemathesis.Case, url: str, headers: dict[str, str]) -> None:
    """The same request from a web page of another origin, and for another Host: 403, in
    OpenAI's shape and as documented."""
    for extra in ({"Origin": FOREIGN_ORIGIN}, {"Host": FOREIGN_HOST}):
        sent = {**headers, **extra}
        response = case.call(base_url=url, headers=sent)
        assert response.status_code == 403, (extra, response.status_code, response.text)
        assert_error_shape(403, response.json())
        case.validate_response(response, checks=list(CONFORMANCE), headers=sent)


def wrong_key_variant(case: schemathesis.Case, url: str) -> None:
    """The same request with a wrong API key: 401 (before routing) for all but ``/health``. A
    Host the case generated is left out: a foreign Host is refused first (403, whatever the key:
    :func:`foreign_variants`), and this variant is about the key alone."""
    generated = case.headers
    case.headers = {k: v for k, v in (generated or {}).items() if k.lower() != "host"}
    try:
        response = case.call(base_url=url, headers={"Authorization": "Bearer not-the-key"})
    finally:
        case.headers = generated
    if case.path == "/health":
        assert response.status_code != 401
        return
    assert response.status_code == 401, (response.status_code, response.text)
    assert_error_shape(401, response.json())
    case.validate_response(response, checks=list(CONFORMANCE))
