"""Print nothing raw: hostile text from an engine, a container or a server reaches no terminal raw.

The commands that talk to a Docker engine and a vLLM server are fed
:data:`~tests.unit.hostile_text.HOSTILE` where they read it: a container's name, labels and log
lines, the server's ``/version`` and ``/v1/models`` answers, the facts a fingerprint or the doctor
reads from the engine, the paths they write. The server is a real HTTP server on loopback
answering as vLLM does (``test_sampling_faults.FakeVllm``), the engine a fake that holds the
profile's container (no engine can be made to answer hostile text on cue). Each command runs for
real, with and without ``--json``, and is held to what ``test_escaped_output.py`` holds the
evidence commands to.

:func:`test_every_command_that_prints_is_fed_hostile_text` requires every command of the
application to be fed hostile text by a scenario of either file, or to be listed in
:data:`PRINTS_NO_RECEIVED_DATA` with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer.main

from detserve.fingerprint import ContainerFacts, EngineVersion
from detserve.gateway.listener import GatewayServer
from detserve.profile import LoadedProfile, load_profile
from detserve.prompts import load_bundle
from detserve.runtime import probe
from detserve.runtime.container_spec import LABEL_PROFILE, ContainerSpec, build_container_spec
from detserve.runtime.docker_engine import ContainerInfo, DockerEngine, ImageInfo

from .committed import BUNDLE_DIR, BUNDLE_PIN, CliRunner, TinyWorkspace
from .containers import faithful_container, pinned_image
from .fake_http import Answer, serving
from .hostile_text import HOSTILE, HOSTILE_NAME, Scenario
from .test_cli_startup import _full_app
from .test_doctor import FakeDoctorEngine, pinned_profile
from .test_escaped_output import SCENARIOS as EVIDENCE_SCENARIOS
from .test_escaped_output import run_scenario
from .test_sampling_faults import FakeEngine, FakeVllm, Rig, _rig

#: Commands that print no text received from outside, each with why; every other command must be
#: fed hostile text by a scenario. Their output is still escaped (the same output functions).
PRINTS_NO_RECEIVED_DATA: dict[str, str] = {
    "config schema": "prints detserve's own profile JSON Schema; it reads no file and no option",
    "config options": "prints detserve's own allowlists of engine options and variables; it "
    "reads no file and no option",
}


class HostileVllm(FakeVllm):
    """vLLM's answers, with hostile text where a server chooses the words: its version and the
    name and root of a second model it serves."""

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        self.n_tokens.setdefault(body["prompt"], 3)  # the smoke test's prompts too
        return super().completion(body)

    def answer(self, method: str, path: str, body: dict[str, Any] | None) -> Answer:
        if path == "/health":
            return Answer(body=b"")
        if path == "/version":
            return Answer(body={"version": HOSTILE})
        if path == "/v1/models":
            models = [*self.models, {"id": HOSTILE, "root": HOSTILE}]
            return Answer(body={"object": "list", "data": models})
        return super().answer(method, path, body)


class HostileEngine(FakeEngine):
    """The profile's container, whose log and (when it is started) name are hostile."""

    def __init__(self, engine: FakeEngine) -> None:
        super().__init__(engine.container, engine.image)
        self.present = True

    def find(self, name: str) -> ContainerInfo | None:
        # By name, as an engine finds it; the name it reports back is its own word.
        return self.container if self.present else None

    def logs(self, container_id: str, tail: int) -> list[str]:
        return ["INFO: started", HOSTILE]

    def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        self.present = True
        return dataclasses.replace(self.container, name=HOSTILE)

    def ensure_image(self, image: str) -> ImageInfo:
        return self.image

    def stop_and_remove(self, container_id: str) -> None:
        self.present = False


class HostileProbe:
    """The facts ``detserve env`` and ``check`` read from the engine and the container."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def engine_version(self) -> EngineVersion:
        return EngineVersion(HOSTILE, "1.41")

    def container_facts(self, loaded: LoadedProfile) -> ContainerFacts:
        return ContainerFacts(
            image_id="sha256:" + "b" * 64,
            environment={"VLLM_CPU_KVCACHE_SPACE": HOSTILE},
            versions={"python": "3.11.2", "vllm": HOSTILE, "torch": "2.9.0"},
        )


@dataclasses.dataclass
class EngineWorld:
    rig: Rig
    engine: HostileEngine
    monkeypatch: pytest.MonkeyPatch

    @property
    def config(self) -> Path:
        return self.rig.loaded.path

    @property
    def workspace(self) -> TinyWorkspace:
        return self.rig.workspace

    def named(self, suffix: str) -> Path:
        return self.rig.out / f"{HOSTILE_NAME}{suffix}"

    def edit_profile(self, **runtime: Any) -> None:
        """Change the profile, and the container to the one ``detserve start`` makes of it."""
        document = json.loads(self.config.read_text())
        document["runtime"].update(runtime)
        self.config.write_text(json.dumps(document))
        spec = build_container_spec(load_profile(self.config))
        self.engine.container = faithful_container(spec)
        self.engine.image = pinned_image(spec)


def _status(w: EngineWorld) -> list[str | Path]:
    return ["--config", w.config]


def _logs(w: EngineWorld) -> list[str | Path]:
    return ["--config", w.config]


def _stop(w: EngineWorld) -> list[str | Path]:
    # A container of the profile's name that another profile labelled: the label is quoted.
    labels = {**w.engine.container.labels, LABEL_PROFILE: HOSTILE}
    w.engine.container = dataclasses.replace(w.engine.container, labels=labels)
    return ["--config", w.config]


def _start(w: EngineWorld) -> list[str | Path]:
    w.engine.present = False
    return ["--config", w.config]


def _wait(w: EngineWorld) -> list[str | Path]:
    return ["--config", w.config, "--timeout", "10"]


def _wait_on_a_changed_snapshot(w: EngineWorld) -> list[str | Path]:
    # The container's name, as the engine reports it, goes into the hint added to the snapshot
    # mismatch where it is caught: text no error's constructor escaped.
    w.engine.container = dataclasses.replace(w.engine.container, name=HOSTILE)
    blob = w.workspace.blob_of("config.json")
    blob.write_bytes(blob.read_bytes() + b" ")
    return ["--config", w.config, "--timeout", "10", "--verify-manifest"]


def _smoke(w: EngineWorld) -> list[str | Path]:
    return ["--config", w.config]


def _run(w: EngineWorld) -> list[str | Path]:
    w.edit_profile(cpu_placement=None)  # placing CPUs reads /proc in the container: no fake
    return ["--config", w.config, "--timeout", "10"]


def _env(w: EngineWorld) -> list[str | Path]:
    w.monkeypatch.setattr(probe.DockerProbe, "from_env", lambda *a: HostileProbe(w.engine))
    return ["--config", w.config, "--fingerprint-output", w.named(".env.json")]


def _doctor(w: EngineWorld) -> list[str | Path]:
    config = pinned_profile(w.workspace)
    engine = FakeDoctorEngine(load_profile(config), clock=datetime.now(UTC))
    engine.engine_version = lambda: EngineVersion(HOSTILE, "1.41")  # type: ignore[method-assign]
    w.monkeypatch.setattr(probe.DockerProbe, "from_env", lambda *a: engine)
    return ["--config", config]


def _bundle() -> list[str | Path]:
    return ["--bundle", BUNDLE_DIR, "--bundle-pin", BUNDLE_PIN]


def _sample(w: EngineWorld) -> list[str | Path]:
    return [
        *("--config", w.config, "--n-prompts", "2", "--max-tokens", "4", *_bundle()),
        *("--run-log-output", w.named(".runlog.jsonl")),
        *("--sidecar-output", w.named(".sidecar.json")),
    ]


def _check(w: EngineWorld) -> list[str | Path]:
    w.monkeypatch.setattr(probe.DockerProbe, "from_env", lambda *a: HostileProbe(w.engine))
    return [
        *("--config", w.config, "--tier", "1", "--runs", "2", "--concurrency", "2"),
        *("--n-prompts", "2", "--max-tokens", "4", *_bundle(), "--output-dir", w.named("")),
    ]


def _serve(w: EngineWorld) -> list[str | Path]:
    real_run = GatewayServer.run

    def run_briefly(server: GatewayServer) -> None:
        # Stop the real server once it listens, as Ctrl-C would: the command then reports.
        def stop_when_started() -> None:
            while not server.server.started:
                threading.Event().wait(0.01)
            server.server.should_exit = True

        threading.Thread(target=stop_when_started, daemon=True).start()
        real_run(server)

    w.monkeypatch.setattr(GatewayServer, "run", run_briefly)
    return ["--config", w.config, "--port", "0", "--transcript-dir", w.named("")]


FAILED = frozenset({1})
ENVIRONMENT = frozenset({3})

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("status", "served models", _status),
    Scenario("logs", "container log", _logs),
    Scenario("stop", "container labels", _stop, codes=ENVIRONMENT),
    Scenario("start", "container name", _start),
    Scenario("wait", "server version", _wait),
    Scenario("wait", "container name in a hint", _wait_on_a_changed_snapshot, codes=FAILED),
    Scenario("smoke", "server version", _smoke),
    Scenario("run", "server version", _run),
    Scenario("env", "container facts", _env),
    Scenario("doctor", "engine version", _doctor),
    Scenario("sample", "output names", _sample, shown=HOSTILE_NAME),
    Scenario("check", "output directory", _check, shown=HOSTILE_NAME),
    Scenario("serve", "transcript directory", _serve, shown=HOSTILE_NAME),
)


@pytest.fixture
def engine_world(
    tiny_workspace: TinyWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EngineWorld]:
    bundle = load_bundle(BUNDLE_DIR, BUNDLE_PIN)
    fake = HostileVllm(n_tokens={p.prompt: p.n_tokens for p in bundle.prompts})
    with serving(fake.answer) as port:
        for rig in _rig(tiny_workspace, tmp_path, monkeypatch, bundle, fake, port):
            rig.out.mkdir()
            engine = HostileEngine(rig.engine)
            connect = classmethod(lambda cls, *a, found=engine: found)
            monkeypatch.setattr(DockerEngine, "from_env", connect)
            yield EngineWorld(rig, engine, monkeypatch)


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_hostile_text_from_engines_and_servers_is_shown_escaped(
    scenario: Scenario, json_output: bool, engine_world: EngineWorld, cli: CliRunner
) -> None:
    run_scenario(scenario, engine_world, cli, json_output=json_output)


def _command_names(group: Any, prefix: str = "") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            names |= _command_names(command, f"{prefix}{name} ")
        else:
            names.add(f"{prefix}{name}")
    return names


def test_every_command_that_prints_is_fed_hostile_text() -> None:
    commands = _command_names(typer.main.get_command(_full_app()))
    fed = {scenario.command for scenario in (*EVIDENCE_SCENARIOS, *SCENARIOS)}
    assert fed.isdisjoint(PRINTS_NO_RECEIVED_DATA), "a command listed as printing nothing received"
    missing = commands - fed - PRINTS_NO_RECEIVED_DATA.keys()
    assert missing == set(), f"commands never fed hostile text: {sorted(missing)}"
    assert fed | PRINTS_NO_RECEIVED_DATA.keys() <= commands, "a scenario names no command"
