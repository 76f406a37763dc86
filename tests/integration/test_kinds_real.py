"""Every request kind against the real engine and the real vLLM CPU container.

One profile, two container lifetimes (a module fixture): each committed reference bundle
(completion, chat, JSON schema, regex, choice, grammar) is sampled in each lifetime; the two run
logs of a kind must be byte-identical, every constrained output must satisfy its constraint as
detserve checked it, and a replay of the chat and constrained claims must be IDENTICAL. Then the
refusals that must come before the first request: an unpinned structured-outputs backend, a
constraint the engine cannot compile (the engine's own message, naming the line), a chat
template override.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from detserve.runlog import read_run_log

from .conftest import REPO_ROOT, CliRun, DetserveRunner, ProfileFactory

pytestmark = pytest.mark.integration

EXIT_OK, EXIT_INPUT = 0, 2
MAX_TOKENS = 32
KINDS = (
    "reference_prompts",
    "chat_prompts",
    "json_prompts",
    "regex_prompts",
    "choice_prompts",
    "grammar_prompts",
)


def bundle_options(name: str) -> list[str | Path]:
    return [
        "--bundle",
        REPO_ROOT / "artifacts" / name,
        "--bundle-pin",
        REPO_ROOT / "manifests" / name / f"{name}.sha256",
    ]


@dataclass
class KindsSession:
    profile: Path
    work: Path
    detserve: DetserveRunner
    runs: dict[str, CliRun] = field(default_factory=dict)

    def log(self, label: str) -> Path:
        return self.work / f"{label}.runlog.jsonl"

    def sample(self, label: str, *options: str | Path) -> CliRun:
        ran = self.detserve(
            "sample",
            "--config",
            self.profile,
            "--max-tokens",
            str(MAX_TOKENS),
            "--run-log-output",
            self.log(label),
            "--sidecar-output",
            self.work / f"{label}.sidecar.json",
            *options,
        )
        self.runs[label] = ran
        return ran

    def start(self) -> None:
        ran = self.detserve("run", "--config", self.profile, timeout=900)
        assert ran.code == EXIT_OK, ran


@pytest.fixture(scope="module")
def session(
    profile_factory: ProfileFactory,
    detserve: DetserveRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KindsSession]:
    work = tmp_path_factory.mktemp("kinds")
    ks = KindsSession(profile=profile_factory("kinds"), work=work, detserve=detserve)
    for side in ("a", "b"):
        ks.start()
        for name in KINDS:
            ks.sample(f"{name}-{side}", *bundle_options(name))
        if side == "a":
            stopped = detserve("stop", "--config", ks.profile)
            assert stopped.code == EXIT_OK, stopped
    yield ks
    detserve("stop", "--config", ks.profile)


def samples_of(path: Path) -> list[Any]:
    return list(read_run_log(path))[1:-1]


@pytest.mark.parametrize("name", KINDS)
def test_each_kind_samples_byte_identically_in_two_lifetimes(
    session: KindsSession, name: str
) -> None:
    for side in ("a", "b"):
        ran = session.runs[f"{name}-{side}"]
        assert ran.code == EXIT_OK, ran
    a, b = session.log(f"{name}-a"), session.log(f"{name}-b")
    assert a.read_bytes() == b.read_bytes()
    compared = session.detserve("eval-determinism", "--run-a", a, "--run-b", b)
    assert compared.code == EXIT_OK, compared
    assert "IDENTICAL" in compared.out, compared


@pytest.mark.parametrize("name", KINDS)
def test_samples_record_kind_and_every_constraint_is_satisfied(
    session: KindsSession, name: str
) -> None:
    lines = [
        json.loads(line)
        for line in (REPO_ROOT / "artifacts" / name / "prompts.jsonl").read_text().splitlines()
    ]
    samples = samples_of(session.log(f"{name}-a"))
    assert len(samples) == len(lines)
    for sample, line in zip(samples, lines, strict=True):
        assert sample.prompt_id == line["id"]
        assert sample.kind == ("chat" if "messages" in line else "completion")
        assert len(sample.prompt_token_ids) == line["n_tokens"]
        if "constraint" in line:
            assert sample.constraint == next(iter(line["constraint"]))
            assert sample.constraint_satisfied is True, (sample.text, sample.finish_reason)
        else:
            assert sample.constraint is None
            assert sample.constraint_satisfied is None


def test_a_replay_of_a_chat_and_a_constrained_claim_is_identical(session: KindsSession) -> None:
    for name in ("chat_prompts", "json_prompts"):
        replayed = session.detserve(
            "replay",
            "--claim",
            session.log(f"{name}-a"),
            "--config",
            session.profile,
            "--output-dir",
            session.work / f"replay-{name}",
            *bundle_options(name),
            timeout=900,
        )
        assert replayed.code == EXIT_OK, replayed
        assert "IDENTICAL" in replayed.out, replayed


def _requests_bundle(
    detserve: DetserveRunner, profile: Path, root: Path, lines: list[dict[str, Any]]
) -> list[str | Path]:
    """A bundle made from request lines with the real commands, pinned; its options."""
    dataset = root / "dataset.jsonl"
    dataset.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    import hashlib

    digest = hashlib.sha256(dataset.read_bytes()).hexdigest()
    built = detserve(
        "prompts", "bootstrap", "--config", profile, "--dataset-file", dataset,
        "--dataset-sha256", digest, "--format", "requests", "--n-prompts", str(len(lines)),
        "--output-dir", root / "bundle", "--name", "probe",
    )  # fmt: skip
    assert built.code == EXIT_OK, built
    pin = root / "bundle.sha256"
    hashed = detserve("hash", "--snapshot", root / "bundle", "--manifest-output", pin)
    assert hashed.code == EXIT_OK, hashed
    return ["--bundle", root / "bundle", "--bundle-pin", pin]


def test_a_constraint_the_engine_cannot_compile_is_refused_before_sampling(
    session: KindsSession, tmp_path: Path
) -> None:
    # Python's re compiles a lookbehind; xgrammar refuses it: the preflight finds out.
    options = _requests_bundle(
        session.detserve,
        session.profile,
        tmp_path,
        [
            {"prompt": "A fine line", "constraint": {"regex": "[a-z]{1,4}"}},
            {"prompt": "Another", "constraint": {"regex": "(?<=a)b"}},
        ],
    )
    ran = session.sample("uncompilable", *options)
    assert ran.code == EXIT_INPUT, ran
    assert "prompts.jsonl:2 (p00001): the engine refuses its regex constraint" in ran.err, ran
    assert "Lookbehind is not supported" in ran.err, ran
    assert not session.log("uncompilable").exists()


def test_an_unpinned_backend_is_refused_before_the_first_request(
    session: KindsSession, profile_factory: ProfileFactory, detserve: DetserveRunner
) -> None:
    def unpinned(document: dict[str, Any]) -> None:
        del document["vllm"]["structured_outputs"]

    profile = profile_factory("kinds-unpinned", edit=unpinned)
    ran = detserve(
        "sample", "--config", profile, *bundle_options("regex_prompts"),
        "--run-log-output", session.work / "unpinned.runlog.jsonl",
        "--sidecar-output", session.work / "unpinned.sidecar.json",
    )  # fmt: skip
    assert ran.code == EXIT_INPUT, ran
    assert "regex_prompts/prompts.jsonl:1 (p00000): a regex constraint needs a pinned" in ran.err


def test_a_chat_template_override_is_refused_before_anything_runs(
    profile_factory: ProfileFactory, detserve: DetserveRunner
) -> None:
    def override(document: dict[str, Any]) -> None:
        document["vllm"]["extra_args"] = {"--chat-template": "/tmp/other.jinja"}

    profile = profile_factory("kinds-template", edit=override)
    started = detserve("start", "--config", profile)
    assert started.code == EXIT_INPUT, started
    assert "--chat-template is refused in a strict profile" in started.err, started
