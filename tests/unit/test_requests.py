"""Request kinds: bundle lines, constraints, the request body, the record, the preflight.

Each defence has a test here that fails without it: a line mixing ``prompt`` and ``messages``, a
line configuring a chat template, a null field, a constraint that does not load, an output that
violates its constraint, an engine refusing a constraint, an unpinned structured-outputs backend.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import detserve.constraint_check as constraint_check
from detserve.canonical import canonical_bytes
from detserve.errors import (
    BundleError,
    ConstraintViolated,
    InputError,
    PinMismatch,
    ProfileError,
    RequestRefused,
    RunLogError,
    ServerError,
    UsageError,
)
from detserve.profile import load_profile, parse_profile
from detserve.prompts import BUNDLE_FILE, PROMPTS_FILE, PromptCounter, load_bundle
from detserve.request_kinds import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    Constraint,
    ConstraintUncheckable,
    GenerationParams,
    PromptRecord,
    preflight_constraints,
    request_body,
    sample_record,
)
from detserve.runlog import write_run_log
from detserve.sampling import SampleRequest, check_request, prompts_within_budget
from detserve.spelled_json import encode_body

from .committed import REPO_ROOT, TINY_CONFIG, TINY_SNAPSHOT
from .runlog_builders import make_header, make_sample

PARAMS = GenerationParams(max_tokens=8, seed=0, logprobs=None, model="tiny-llama")
CHAT_BUNDLE = REPO_ROOT / "artifacts" / "chat_prompts"
REGEX_BUNDLE = REPO_ROOT / "artifacts" / "regex_prompts"
REGEX_PIN = REPO_ROOT / "manifests" / "regex_prompts" / "regex_prompts.sha256"


def write_bundle(root: Path, lines: list[bytes]) -> tuple[Path, Path]:
    """A bundle of ``lines`` (raw) with the chat bundle's bundle.json, and its pin."""
    bundle = root / "bundle"
    bundle.mkdir(parents=True)
    info = json.loads((CHAT_BUNDLE / BUNDLE_FILE).read_bytes())
    info["n_prompts"] = len(lines)
    (bundle / BUNDLE_FILE).write_bytes(canonical_bytes(info))
    (bundle / PROMPTS_FILE).write_bytes(b"".join(lines))
    pin = root / "bundle.sha256"
    pin.write_text(
        "".join(
            f"{hashlib.sha256((bundle / name).read_bytes()).hexdigest()}  ./{name}\n"
            for name in (BUNDLE_FILE, PROMPTS_FILE)
        )
    )
    return bundle, pin


GOOD_CHAT = b'{"id":"c","messages":[{"content":"Hi","role":"user"}],"n_tokens":3}\n'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param(
            b'{"id":"x","messages":[{"content":"Hi","role":"user"}],"n_tokens":3,"prompt":"Hi"}\n',
            "either 'prompt' (a completion) or 'messages' (a chat), not both",
            id="prompt-and-messages",
        ),
        pytest.param(b'{"id":"x","n_tokens":3}\n', "needs 'prompt'", id="neither"),
        pytest.param(
            b'{"chat_template":"{{ x }}","id":"x","n_tokens":3,"prompt":"Hi"}\n',
            "chat_template refused: the chat template is the pinned snapshot's",
            id="chat-template",
        ),
        pytest.param(
            b'{"chat_template_kwargs":{},"id":"x","messages":[{"content":"Hi","role":"user"}],'
            b'"n_tokens":3}\n',
            "chat_template_kwargs refused",
            id="chat-template-kwargs",
        ),
        pytest.param(
            b'{"id":"x","messages":[{"content":"Hi","role":"tool"}],"n_tokens":3}\n',
            "messages.0.role",
            id="unknown-role",
        ),
        pytest.param(
            b'{"id":"x","n_tokens":3,"prompt":"Hi","stop":null}\n',
            "not canonical JSON (RFC 8785: sorted keys, no spaces, no null fields)",
            id="null-field",
        ),
        pytest.param(
            b'{"constraint":{"choice":["a"],"regex":"a"},"id":"x","n_tokens":3,"prompt":"Hi"}\n',
            "exactly one of json_schema, regex, choice, grammar; found regex, choice",
            id="two-constraints",
        ),
        pytest.param(
            b'{"constraint":{"regex":"(unclosed"},"id":"x","n_tokens":3,"prompt":"Hi"}\n',
            "regex does not compile",
            id="bad-regex",
        ),
        pytest.param(
            b'{"constraint":{"json_schema":"{\\"type\\":\\"nonsense\\"}"},"id":"x",'
            b'"n_tokens":3,"prompt":"Hi"}\n',
            "json_schema is not a JSON Schema detserve can check",
            id="bad-schema",
        ),
        pytest.param(
            b'{"constraint":{"json_schema":{"type":"object"}},"id":"x","n_tokens":3,'
            b'"prompt":"Hi"}\n',
            "json_schema is held as its JSON text (a string)",
            id="schema-as-an-object",
        ),
        pytest.param(
            b'{"constraint":{"json_schema":"{\\"type\\": \\"object\\"}"},"id":"x",'
            b'"n_tokens":3,"prompt":"Hi"}\n',
            "json_schema: not in its compact form",
            id="schema-not-compact",
        ),
        pytest.param(
            b'{"constraint":{"json_schema":"{\\"$ref\\":\\"http://127.0.0.1:9/s\\"}"},'
            b'"id":"x","n_tokens":3,"prompt":"Hi"}\n',
            "does not resolve inside the schema",
            id="remote-ref",
        ),
        pytest.param(
            b'{"constraint":{"grammar":"root ::= \\"a\\""},"id":"x","n_tokens":3,"prompt":"Hi"}\n',
            "grammar is not a Lark grammar",
            id="not-lark",
        ),
        pytest.param(
            b'{"constraint":{"grammar":"%import common.WORD\\nstart: WORD"},"id":"x",'
            b'"n_tokens":3,"prompt":"Hi"}\n',
            "%import reads grammar files outside the request",
            id="grammar-import",
        ),
        pytest.param(
            b'{"constraint":{"choice":["a","a"]},"id":"x","n_tokens":3,"prompt":"Hi"}\n',
            "choice options must be distinct",
            id="duplicate-choice",
        ),
    ],
)
def test_a_bad_line_is_refused_naming_the_line(tmp_path: Path, line: bytes, message: str) -> None:
    bundle, pin = write_bundle(tmp_path, [GOOD_CHAT, line])
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle, pin)
    text = caught.value.diagnostics()
    assert caught.value.exit_code == 2
    assert f"{bundle / PROMPTS_FILE}:2" in text, text
    assert message in text, text


def test_committed_kind_bundles_load_with_their_kinds() -> None:
    kinds = {
        "reference_prompts": {("completion", None)},
        "chat_prompts": {("chat", None)},
        "json_prompts": {("completion", "json_schema"), ("chat", "json_schema")},
        "regex_prompts": {("completion", "regex"), ("chat", "regex")},
        "choice_prompts": {("completion", "choice"), ("chat", "choice")},
        "grammar_prompts": {("completion", "grammar"), ("chat", "grammar")},
    }
    for name, expected in kinds.items():
        bundle = load_bundle(
            REPO_ROOT / "artifacts" / name, REPO_ROOT / "manifests" / name / f"{name}.sha256"
        )
        found = {
            (p.kind, None if p.constraint is None else p.constraint.kind) for p in bundle.prompts
        }
        assert found == expected, name


def test_a_chat_is_counted_as_the_real_server_rendered_it() -> None:
    # Measured against vLLM 0.32 serving this snapshot: POST /tokenize with these messages and
    # add_generation_prompt answered 46 tokens, starting with BOS (510).
    contents = {
        name: (TINY_SNAPSHOT / name).read_bytes()
        for name in ("tokenizer.json", "tokenizer_config.json")
    }
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    assert PromptCounter(contents).count({"messages": messages}) == 46


def test_a_snapshot_without_a_chat_template_refuses_chats() -> None:
    contents = {"tokenizer.json": (TINY_SNAPSHOT / "tokenizer.json").read_bytes()}
    with pytest.raises(InputError, match="no chat template"):
        PromptCounter(contents).count({"messages": [{"role": "user", "content": "Hi"}]})


# --- constraints --------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
SCHEMA_TEXT = json.dumps(SCHEMA, separators=(",", ":"))
GRAMMAR = 'start: greeting " " name\ngreeting: "hello" | "goodbye"\nname: /[a-z]{1,6}/\n'


@pytest.mark.parametrize(
    ("constraint", "good", "bad"),
    [
        ({"json_schema": SCHEMA_TEXT}, '{"answer":"no"}', '{"answer":"maybe"}'),
        ({"json_schema": SCHEMA_TEXT}, '{"answer":"yes"}', '{"answer":"yes"'),
        ({"json_schema": '{"type":"number"}'}, "1.5", "NaN"),
        ({"regex": "[0-9]{3}"}, "123", "1234"),
        ({"regex": "[0-9]{3}"}, "123", "x123"),
        ({"choice": ["red", "blue"]}, "red", "re"),
        ({"grammar": GRAMMAR}, "hello bob", "hello Bob"),
    ],
)
def test_detserve_checks_each_constraint_in_full(
    constraint: dict[str, Any], good: str, bad: str
) -> None:
    checked = Constraint.model_validate(constraint)
    assert checked.satisfied_by(good)
    assert not checked.satisfied_by(bad)


def test_the_constraint_hash_is_of_its_canonical_json() -> None:
    constraint = Constraint.model_validate({"choice": ["b", "a"]})
    assert constraint.sha256 == hashlib.sha256(b'{"choice":["b","a"]}').hexdigest()


def record(**fields: Any) -> PromptRecord:
    return PromptRecord.model_validate({"id": "p", "n_tokens": 3, **fields})


def test_the_request_bodies_of_both_kinds() -> None:
    path, body = request_body(
        record(prompt="Hi", stop=["."], constraint={"regex": "[a-z]+"}), PARAMS
    )
    assert path == COMPLETIONS_PATH
    assert body == {
        "prompt": "Hi",
        "max_tokens": 8,
        "temperature": 0,
        "seed": 0,
        "n": 1,
        "stream": False,
        "return_token_ids": True,
        "model": "tiny-llama",
        "stop": ["."],
        "structured_outputs": {"regex": "[a-z]+"},
    }
    messages = [{"role": "user", "content": "Hi"}]
    path, body = request_body(
        record(messages=messages, constraint={"json_schema": SCHEMA_TEXT}),
        GenerationParams(max_tokens=8, seed=0, logprobs=2, model=None),
    )
    assert path == CHAT_PATH
    assert body["messages"] == messages
    assert body["structured_outputs"] == {"json": SCHEMA_TEXT}  # its text, embedded as it is
    assert f'"structured_outputs":{{"json":{SCHEMA_TEXT}}}'.encode() in encode_body(body)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    # the template is the server's pinned one: nothing in the body configures it
    assert not {"chat_template", "chat_template_kwargs", "add_generation_prompt"} & set(body)


@dataclass
class Answer:
    text: str
    finish_reason: str | None = "stop"
    prompt_token_ids: tuple[int, ...] = (1, 2, 3)
    token_ids: tuple[int, ...] = (4, 5)
    logprobs: tuple[Any, ...] | None = None


@dataclass
class Sender:
    answer: Answer | Exception
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, path: str, body: dict[str, Any]) -> Answer:
        self.sent.append((path, body))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_satisfied_constraint_is_recorded() -> None:
    line = sample_record(
        Sender(Answer("abc")), 0, record(prompt="Hi", constraint={"regex": "[a-z]+"}), PARAMS
    )
    assert line["kind"] == "completion"
    assert line["constraint"] == "regex"
    assert line["constraint_satisfied"] is True
    assert line["constraint_sha256"] == Constraint.model_validate({"regex": "[a-z]+"}).sha256


def test_an_output_cut_short_is_recorded_unsatisfied() -> None:
    line = sample_record(
        Sender(Answer('{"answer":', finish_reason="length")),
        0,
        record(prompt="Hi", constraint={"json_schema": SCHEMA_TEXT}),
        PARAMS,
    )
    assert line["constraint_satisfied"] is False


def test_an_output_violating_its_constraint_fails_the_run_naming_the_sample() -> None:
    with pytest.raises(ConstraintViolated) as caught:
        sample_record(
            Sender(Answer("ABC")), 4, record(prompt="Hi", constraint={"regex": "[a-z]+"}), PARAMS
        )
    assert caught.value.exit_code == 1
    assert caught.value.message.startswith(
        "sample 4 (p, completion): the output violates its regex"
    )


#: backtracks for ever on a run of "a" not followed by "c" (Python's re would never return)
CATASTROPHIC = "(a|aa)*c"


def test_a_regex_that_backtracks_for_ever_stops_the_run_as_bad_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a claimed bundle is someone else's input: its pattern must not hang the verifier
    monkeypatch.setattr(constraint_check, "REGEX_CHECK_TIMEOUT_S", 0.2)
    with pytest.raises(ConstraintUncheckable) as caught:
        sample_record(
            Sender(Answer("a" * 60 + "cX")),
            2,
            record(prompt="Hi", constraint={"regex": CATASTROPHIC}),
            PARAMS,
        )
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(
        "sample 2 (p, completion): the regex constraint did not finish checking a 62-character "
        "output: the regex did not finish matching in 0.2 s"
    )


def test_a_chat_rendered_otherwise_breaks_the_pin() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(
        PinMismatch,
        match="rendered and tokenized the chat into 3 tokens; the "
        "pinned template and tokenizer give 4",
    ):
        sample_record(Sender(Answer("x")), 0, record(messages=messages, n_tokens=4), PARAMS)


def test_the_preflight_turns_an_engine_refusal_into_bad_input_naming_the_line() -> None:
    refused = RequestRefused(
        "POST /v1/completions was refused: HTTP 400",
        status=400,
        engine_message="Regex parsing error at position 3: Lookbehind is not supported yet.",
    )
    records = [
        record(prompt="a"),
        record(prompt="b", constraint={"regex": "(?<=a)b"}),
        record(prompt="c", constraint={"regex": "(?<=a)b"}),
    ]
    sender = Sender(refused)
    with pytest.raises(InputError) as caught:
        preflight_constraints(sender, records, PARAMS, "b/prompts.jsonl")
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith("b/prompts.jsonl:2 (p): the engine refuses its regex")
    assert "Lookbehind is not supported yet" in caught.value.message
    assert sender.sent[0][1]["max_tokens"] == 1


def test_the_preflight_sends_each_distinct_constraint_once() -> None:
    records = [record(prompt=p, constraint={"choice": ["x", "y"]}) for p in "abc"]
    sender = Sender(Answer("x"))
    preflight_constraints(sender, [record(prompt="z"), *records], PARAMS, "p.jsonl")
    assert len(sender.sent) == 1


def test_the_preflight_leaves_a_server_fault_an_environment_error() -> None:
    sender = Sender(ServerError("HTTP 500"))
    with pytest.raises(ServerError) as caught:
        preflight_constraints(sender, [record(prompt="b", constraint={"regex": "a"})], PARAMS, "p")
    assert caught.value.exit_code == 3


# --- the profile and sampling ------------------------------------------------------------------


def _pinned_profile(tmp_path: Path, edit: Any = None) -> Path:
    document = json.loads(TINY_CONFIG.read_text())
    document["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a" * 64
    document["snapshot"]["hf_home"] = str(REPO_ROOT / "artifacts" / "hf-cache")
    document["snapshot"]["manifest_dir"] = str(REPO_ROOT / "manifests")
    if edit is not None:
        edit(document)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny-cpu.json"
    path.write_text(json.dumps(document))
    return path


def test_an_unpinned_backend_is_refused_before_any_request(tmp_path: Path) -> None:
    def unpinned(document: dict[str, Any]) -> None:
        del document["vllm"]["structured_outputs"]

    loaded = load_profile(_pinned_profile(tmp_path, unpinned))
    bundle = load_bundle(REGEX_BUNDLE, REGEX_PIN)
    request = SampleRequest(
        n_prompts=None,
        max_tokens=8,
        logprobs=None,
        run_log_output=tmp_path / "a.runlog.jsonl",
        sidecar_output=tmp_path / "a.sidecar.json",
    )
    with pytest.raises(UsageError) as caught:
        check_request(loaded, bundle, request)
    assert caught.value.message.startswith(
        f"{REGEX_BUNDLE / PROMPTS_FILE}:1 (p00000): a regex constraint needs a pinned "
        "structured-outputs backend"
    )
    # with the backend pinned, the same request passes
    check_request(load_profile(_pinned_profile(tmp_path / "pinned")), bundle, request)


def test_check_refuses_an_unpinned_backend_as_sample_does(tmp_path: Path) -> None:
    # `detserve check` plans its passes with prompts_within_budget: the same refusal, the same
    # message, before any request
    def unpinned(document: dict[str, Any]) -> None:
        del document["vllm"]["structured_outputs"]

    bundle = load_bundle(REGEX_BUNDLE, REGEX_PIN)
    with pytest.raises(UsageError, match=r":1 \(p00000\): a regex constraint needs a pinned"):
        prompts_within_budget(load_profile(_pinned_profile(tmp_path, unpinned)), bundle, None, 8)
    pinned = load_profile(_pinned_profile(tmp_path / "pinned"))
    assert len(prompts_within_budget(pinned, bundle, None, 8)) == len(bundle.prompts)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["vllm"].update(structured_outputs={"backend": "auto"}),
            "vllm.structured_outputs.backend",
        ),
        (
            lambda d: d["vllm"].update(extra_args={"--structured-outputs-config": "{}"}),
            "set from the profile's structured fields",
        ),
        (
            lambda d: d["vllm"].update(extra_args={"--chat-template": "x.jinja"}),
            "--chat-template is refused",
        ),
        (
            lambda d: d["vllm"].update(extra_args={"--trust-request-chat-template": True}),
            "lets a request supply its own chat template",
        ),
        (
            lambda d: d["vllm"].update(extra_args={"--default-chat-template-kwargs": "{}"}),
            "changes what the pinned chat template renders",
        ),
    ],
)
def test_the_profile_refuses_template_and_backend_overrides(edit: Any, message: str) -> None:
    document = json.loads(TINY_CONFIG.read_text())
    edit(document)
    with pytest.raises(ProfileError) as caught:
        parse_profile(json.dumps(document).encode(), source="p.json")
    assert message in caught.value.diagnostics()


# --- the run log --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"constraint": "regex", "constraint_sha256": "a" * 64, "constraint_satisfied": False,
             "finish_reason": "stop"},
            "only a sample when it was cut short",
        ),
        (
            {"constraint": "regex", "constraint_sha256": None, "constraint_satisfied": True},
            "must be all set or all null",
        ),
    ],
)  # fmt: skip
def test_the_run_log_refuses_inconsistent_constraint_fields(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    sample = make_sample(0) | fields
    with pytest.raises(RunLogError, match=message):
        write_run_log(tmp_path / "x.runlog.jsonl", make_header(1), [sample])


def test_a_divergence_report_names_the_kind_and_constraint() -> None:
    from detserve.evaluation.compare import Thresholds, compare_samples
    from detserve.runlog import RunLogSample

    chat = {"kind": "chat", "constraint": "regex", "constraint_sha256": "a" * 64}
    a = RunLogSample.model_validate_json(
        json.dumps(make_sample(0, output=[1, 2, 3]) | chat | {"constraint_satisfied": True})
    )
    b = RunLogSample.model_validate_json(
        json.dumps(make_sample(0, output=[1, 2, 4]) | chat | {"constraint_satisfied": True})
    )
    shown = str(compare_samples(a, b, Thresholds()))
    assert shown.startswith("sample 0 (prompt-0000, chat, regex): output token 2 differs"), shown
