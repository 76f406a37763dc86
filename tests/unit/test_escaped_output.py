"""Print nothing raw: hostile text in evidence files reaches no terminal raw, in any command.

Each scenario feeds :data:`~tests.unit.hostile_text.HOSTILE` (escape sequences, an OSC, cursor
movement, a carriage return, a C1 CSI, bidi controls, rich markup, a newline) through what one
command reads (a run log's header, a transcript's pins, a file name, a signed envelope's key id,
a profile, a hub's or registry's answer) and runs the command for real, as a person does, with
and without ``--json``: stdout and stderr must hold no character a terminal acts on, and the
value must be shown, escaped. The commands that read an engine or a server are in
``test_escaped_output_engine.py``; ``test_every_command_that_prints_is_fed_hostile_text`` there
holds both lists to the application's commands.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from detserve.attestation import attest
from detserve.canonical import canonical_bytes
from detserve.keys import generate_key_pair
from detserve.runlog.models import TranscriptHeader
from detserve.runlog.transcript import TranscriptWriter

from .committed import BUNDLE_DIR, BUNDLE_PIN, DATASET_SOURCE, CliRunner, TinyWorkspace
from .fake_http import Answer, serving
from .hostile_text import HOSTILE, HOSTILE_NAME, Scenario, assert_shown_escaped
from .runlog_builders import write_log
from .test_attest import IMAGE as CLAIM_IMAGE
from .test_attest import fingerprint
from .test_transcript import HEADER, PINS, exchange

DATASET_SHA256 = hashlib.sha256(DATASET_SOURCE.read_bytes()).hexdigest()


@dataclass
class World:
    """Where a scenario writes what the command receives."""

    tmp: Path
    workspace: TinyWorkspace
    monkeypatch: pytest.MonkeyPatch
    #: the port of a loopback HTTP server a scenario may answer from (``answer``)
    port: int
    answer: Any = None

    def named(self, suffix: str) -> Path:
        """A path in the world whose file name is hostile."""
        return self.tmp / f"{HOSTILE_NAME}{suffix}"


def _hostile_log(w: World, path: Path | None = None) -> Path:
    return write_log(
        path or w.tmp / "claim.runlog.jsonl",
        2,
        served_model_name=HOSTILE,
        vllm_version=HOSTILE,
        environment={"HF_HOME": HOSTILE},
    )


def _hostile_transcript(w: World, path: Path) -> Path:
    header = HEADER.model_copy(
        update={"pins": PINS.model_copy(update={"served_model_name": HOSTILE})}
    )
    writer = TranscriptWriter(path, TranscriptHeader.model_validate(header.model_dump()))
    writer.append(exchange(0))
    writer.close("stopped")
    return path


def _runlog_show(w: World) -> list[str | Path]:
    return [_hostile_log(w)]


def _runlog_show_transcript(w: World) -> list[str | Path]:
    return [_hostile_transcript(w, w.tmp / "a.transcript.jsonl")]


def _runlog_validate(w: World) -> list[str | Path]:
    return [write_log(w.named(".runlog.jsonl"), 2)]


def _runlog_validate_directory(w: World) -> list[str | Path]:
    directory = w.named("")
    directory.mkdir()
    _hostile_transcript(w, directory / f"{'d' * 32}.000000.transcript.jsonl")
    return [directory]


def _eval_pair(w: World) -> list[str | Path]:
    run_a = write_log(w.named(".a.runlog.jsonl"), 2)
    return ["--run-a", run_a, "--run-b", _hostile_log(w)]


def _eval_majority(w: World) -> list[str | Path]:
    logs = [write_log(w.tmp / f"n{i}.runlog.jsonl", 2) for i in range(2)]
    return [
        arg for log in (*logs, write_log(w.named(".runlog.jsonl"), 2)) for arg in ("--run", log)
    ]


def _replay(w: World) -> list[str | Path]:
    claim = _hostile_log(w, w.named(".runlog.jsonl"))
    return ["--claim", claim, "--config", w.workspace.config, "--output-dir", w.tmp / "replay"]


def _replay_transcript(w: World) -> list[str | Path]:
    claim = _hostile_transcript(w, w.named(".transcript.jsonl"))
    return ["--claim", claim, "--config", w.workspace.config, "--output-dir", w.tmp / "replay"]


def _claim_inputs(w: World) -> tuple[Path, Path, Path, Path]:
    run_log = write_log(w.named(".runlog.jsonl"), 2, image=CLAIM_IMAGE)
    sidecar = w.tmp / "a.sidecar.json"
    digest = hashlib.sha256(run_log.read_bytes()).hexdigest()
    sidecar.write_bytes(canonical_bytes({"run_log_sha256": digest, "host": "h"}))
    environment = w.tmp / "a.env.json"
    environment.write_bytes(fingerprint(CLAIM_IMAGE).canonical())
    keys = generate_key_pair(w.tmp / "keys")
    return run_log, sidecar, environment, keys.private_key


def _attest(w: World) -> list[str | Path]:
    run_log, sidecar, environment, key = _claim_inputs(w)
    output = w.named(".claim.json")
    return [
        *("--run-log", run_log, "--sidecar", sidecar, "--environment", environment),
        *("--key", key, "--envelope-output", output),
    ]


def _verify_claim(w: World) -> list[str | Path]:
    run_log, sidecar, environment, key = _claim_inputs(w)
    envelope = w.tmp / "a.claim.json"
    attest(run_log, sidecar, key, envelope, environment=environment)
    # The key id is outside what the signature covers: anyone can write one.
    document = json.loads(envelope.read_bytes())
    document["signatures"][0]["keyid"] = HOSTILE
    envelope.write_bytes(canonical_bytes(document))
    public = key.with_suffix(".pub")
    return ["--envelope", envelope, "--public-key", public, "--run-log", run_log]


def _keygen(w: World) -> list[str | Path]:
    return ["--output-dir", w.named("")]


def _bundle_with_a_hostile_file(w: World) -> Path:
    bundle = w.tmp / "bundle"
    shutil.copytree(BUNDLE_DIR, bundle)
    (bundle / HOSTILE_NAME).write_text("not in the pin")
    return bundle


def _prompts_verify(w: World) -> list[str | Path]:
    return ["--bundle", _bundle_with_a_hostile_file(w), "--bundle-pin", BUNDLE_PIN]


def _prompts_bootstrap(w: World) -> list[str | Path]:
    dataset = w.named(".jsonl")
    shutil.copyfile(DATASET_SOURCE, dataset)
    return [
        *("--config", w.workspace.config, "--dataset-file", dataset),
        *("--dataset-sha256", DATASET_SHA256, "--n-prompts", "2", "--output-dir", w.named("")),
    ]


def _verify(w: World) -> list[str | Path]:
    (w.workspace.snapshot / HOSTILE_NAME).write_text("not in the manifest")
    return ["--snapshot", w.workspace.snapshot, "--manifest", w.workspace.manifest]


def _hash(w: World) -> list[str | Path]:
    return ["--snapshot", w.workspace.snapshot, "--manifest-output", w.named(".sha256")]


def _config_validate(w: World) -> list[str | Path]:
    config = w.workspace.config.with_name(f"{HOSTILE_NAME}.json")
    shutil.copyfile(w.workspace.config, config)
    return ["--config", config]


def _config_validate_field(w: World) -> list[str | Path]:
    document = json.loads(w.workspace.config.read_text())
    document["model"]["id"] = HOSTILE  # refused, quoted in the refusal
    w.workspace.config.write_text(json.dumps(document))
    return ["--config", w.workspace.config]


def _lock_model(w: World) -> list[str | Path]:
    def hub(method: str, path: str, body: Any) -> Answer:
        # The hub's answer names a commit that is not one: quoted in the refusal.
        return Answer(body={"id": "detserve/tiny-llama", "sha": HOSTILE, "siblings": []})

    w.answer = hub
    return ["--config", w.workspace.config, "--endpoint", f"http://127.0.0.1:{w.port}"]


def _download(w: World) -> list[str | Path]:
    def hub(method: str, path: str, body: Any) -> Answer:
        # The hub's listing names another commit than the pinned one: quoted in the refusal.
        return Answer(body={"id": "detserve/tiny-llama", "sha": HOSTILE, "siblings": []})

    w.answer = hub
    return ["--config", w.workspace.config, "--endpoint", f"http://127.0.0.1:{w.port}"]


def _init(w: World) -> list[str | Path]:
    # The model id a person pasted: refused, and quoted in the refusal.
    return ["--model", HOSTILE, "--device", "cpu", "--name", "m", "--output", w.tmp / "m.json"]


def _lock_image(w: World) -> list[str | Path]:
    def engine(method: str, path: str, body: Any) -> Answer:
        # A Docker engine's API: the version, a ping, then the registry's refusal, quoted.
        if path.endswith("/version"):
            return Answer(body={"ApiVersion": "1.41", "Version": "20.10.24"})
        if path.endswith("/_ping"):
            return Answer(body=b"OK")
        return Answer(500, {"message": HOSTILE})

    w.answer = engine
    return ["--config", w.workspace.config, "--docker-host", f"tcp://127.0.0.1:{w.port}"]


def _fleet(w: World) -> list[str | Path]:
    claim = _hostile_log(w, w.named(".runlog.jsonl"))
    return [
        *("--config", w.workspace.config, "--claim", claim, "--output-dir", w.tmp / "fleet"),
        *("--node", f"unix://{w.tmp}/no-engine.sock,name=n1"),
    ]


FAILED = frozenset({1})
BAD_INPUT = frozenset({2})
ENVIRONMENT = frozenset({3})

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("runlog show", "run log header", _runlog_show),
    Scenario("runlog show", "transcript pins", _runlog_show_transcript),
    Scenario("runlog validate", "run log file name", _runlog_validate, shown=HOSTILE_NAME),
    Scenario(
        "runlog validate",
        "transcript directory name",
        _runlog_validate_directory,
        shown=HOSTILE_NAME,
    ),
    Scenario("eval-determinism", "run log name and pins", _eval_pair, codes=FAILED),
    Scenario("eval-determinism", "majority mode", _eval_majority, shown=HOSTILE_NAME),
    Scenario("replay", "claimed pins", _replay, codes=FAILED),
    Scenario("replay", "claimed transcript pins", _replay_transcript, codes=FAILED),
    Scenario("attest", "run log and envelope names", _attest, shown=HOSTILE_NAME),
    Scenario("verify-claim", "envelope key id and run log name", _verify_claim, shown=HOSTILE_NAME),
    Scenario("keygen", "output directory", _keygen, shown=HOSTILE_NAME),
    Scenario(
        "prompts verify", "file in the bundle", _prompts_verify, shown=HOSTILE_NAME, codes=FAILED
    ),
    Scenario(
        "prompts bootstrap", "dataset and output names", _prompts_bootstrap, shown=HOSTILE_NAME
    ),
    Scenario("verify", "file in the snapshot", _verify, shown=HOSTILE_NAME, codes=FAILED),
    Scenario("hash", "manifest name", _hash, shown=HOSTILE_NAME),
    Scenario("config validate", "profile name", _config_validate, shown=HOSTILE_NAME),
    Scenario("config validate", "profile field", _config_validate_field, codes=BAD_INPUT),
    Scenario("lock-model", "hub answer", _lock_model, codes=ENVIRONMENT),
    Scenario("lock-image", "registry answer", _lock_image, codes=ENVIRONMENT),
    Scenario("download", "hub listing", _download, codes=FAILED),
    Scenario("init", "model id", _init, codes=BAD_INPUT),
    Scenario("fleet", "claim name", _fleet, shown=HOSTILE_NAME, codes=ENVIRONMENT),
)


@pytest.fixture
def world(
    tiny_workspace: TinyWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    document = json.loads(tiny_workspace.config.read_text())
    document["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a" * 64
    tiny_workspace.config.write_text(json.dumps(document))
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "world"
    out.mkdir()
    holder: list[World] = []

    def respond(method: str, path: str, body: Any) -> Answer:
        answer = holder[0].answer
        return answer(method, path, body) if answer is not None else Answer(404, b"")

    with serving(respond) as port:
        holder.append(World(out, tiny_workspace, monkeypatch, port))
        yield holder[0]


def run_scenario(scenario: Scenario, world: Any, cli: CliRunner, *, json_output: bool) -> None:
    """Run the scenario's command once; its output must show the hostile value escaped."""
    arguments = scenario.arguments(world)
    ran = cli(*scenario.command.split(), *arguments, *(["--json"] if json_output else []))
    assert ran.code in scenario.codes, ran
    assert_shown_escaped(ran, scenario.shown, json_output=json_output)


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_hostile_text_in_evidence_is_shown_escaped(
    scenario: Scenario, json_output: bool, world: World, cli: CliRunner
) -> None:
    run_scenario(scenario, world, cli, json_output=json_output)


def test_a_verbose_traceback_is_shown_escaped(world: World, cli: CliRunner) -> None:
    # The traceback holds the Docker SDK's exception, whose text is the registry's answer raw.
    ran = cli("--verbose", "lock-image", *_lock_image(world))
    assert ran.code == 3, ran
    assert "Traceback" in ran.err
    assert_shown_escaped(ran, HOSTILE)
