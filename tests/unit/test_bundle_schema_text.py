"""A bundle keeps its author's schema text, and sampling sends those bytes.

``prompts bootstrap`` neither reorders a JSON Schema's keys (their order decides the order in
which the engine writes the fields) nor respells its numbers (``1.0`` is a float, ``1`` an
integer once parsed); the bundle line holds the schema as its JSON text, so canonical JSON
cannot reorder it; the request sampling sends embeds that text as it is; and a schema whose
``$ref`` leaves it is bad input (exit 2) with nothing fetched.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from detserve.errors import EXIT_INPUT, EXIT_OK, BundleError
from detserve.prompts import load_bundle
from detserve.request_kinds import GenerationParams, request_body
from detserve.runtime.vllm_client import VllmServer

from .committed import TINY_CONFIG, CliRunner, sha256_hex
from .fake_http import Answer, serving
from .test_requests import write_bundle

#: properties out of alphabetical order, numbers spelled as an author may spell them
SCHEMA_TEXT = (
    '{"type":"object","properties":{"zeta":{"type":"number","maximum":1e2},'
    '"alpha":{"enum":[1.0,2,-0]}},"required":["zeta","alpha"],"additionalProperties":false}'
)


def bootstrap(cli: CliRunner, tmp_path: Path, lines: list[str]) -> tuple[int, str, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    output = tmp_path / "bundle"
    result = cli(
        "prompts", "bootstrap", "--config", TINY_CONFIG, "--dataset-file", dataset,
        "--dataset-sha256", sha256_hex(dataset.read_bytes()), "--format", "requests",
        "--n-prompts", str(len(lines)), "--output-dir", output,
    )  # fmt: skip
    return result.code, result.text, output


def test_bootstrap_keeps_the_authors_schema_text(tmp_path: Path, cli: CliRunner) -> None:
    spaced = SCHEMA_TEXT.replace(",", ", ").replace(":", ": ")  # as an author may lay it out
    lines = [
        '{"prompt": "As JSON:", "constraint": {"json_schema": ' + spaced + "}}",
        '{"prompt": "Again:", "constraint": {"json_schema": ' + json.dumps(SCHEMA_TEXT) + "}}",
    ]
    code, text, output = bootstrap(cli, tmp_path, lines)
    assert code == EXIT_OK, text
    written = [json.loads(line) for line in (output / "prompts.jsonl").read_text().splitlines()]
    # the schema's own text, compact: keys in the author's order, numbers as written
    assert [line["constraint"]["json_schema"] for line in written] == [SCHEMA_TEXT, SCHEMA_TEXT]


def test_sampling_sends_the_bundles_schema_text(tmp_path: Path) -> None:
    line = {"constraint": {"json_schema": SCHEMA_TEXT}, "id": "p", "n_tokens": 3, "prompt": "Hi"}
    encoded = json.dumps(line, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    bundle, pin = write_bundle(tmp_path, [encoded])
    (record,) = load_bundle(bundle, pin).prompts
    answer = {
        "id": "c",
        "object": "text_completion",
        "created": 1,
        "model": "tiny-llama",
        "choices": [
            {
                "index": 0,
                "text": '{"zeta":1,"alpha":2}',
                "finish_reason": "stop",
                "token_ids": [4, 5],
                "prompt_token_ids": [1, 2, 3],
            }
        ],
    }
    received: list[bytes] = []
    params = GenerationParams(max_tokens=8, seed=0, logprobs=None, model="tiny-llama")
    with (
        serving(lambda *_: Answer(body=answer), received) as port,
        VllmServer(f"http://127.0.0.1:{port}", retries=0) as server,
    ):
        server.generate(*request_body(record, params))
    (sent,) = received
    assert f'"structured_outputs":{{"json":{SCHEMA_TEXT}}}'.encode() in sent


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.3)
    yield server
    server.close()


def test_a_bundle_schema_whose_ref_leaves_it_is_bad_input_and_nothing_is_fetched(
    tmp_path: Path, cli: CliRunner, listener: socket.socket
) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/schema.json"
    schema = json.dumps(
        {"type": "object", "properties": {"a": {"$ref": url}}}, separators=(",", ":")
    )
    line = {"constraint": {"json_schema": schema}, "id": "p", "n_tokens": 3, "prompt": "Hi"}
    encoded = json.dumps(line, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    bundle, pin = write_bundle(tmp_path / "loaded", [encoded])
    with pytest.raises(BundleError) as raised:
        load_bundle(bundle, pin)
    assert raised.value.exit_code == EXIT_INPUT
    assert "does not resolve inside the schema" in raised.value.diagnostics()
    request = '{"prompt": "Hi", "constraint": {"json_schema": ' + schema + "}}"
    code, text, _ = bootstrap(cli, tmp_path / "bootstrapped", [request])
    assert code == EXIT_INPUT, text
    assert "does not resolve inside the schema" in text
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing was fetched
