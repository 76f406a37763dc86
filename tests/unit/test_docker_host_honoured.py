"""``--docker-host`` is honoured by every command that takes it, whatever path the command takes.

Each command runs, with every input it checks first made valid, against an engine at a socket
nothing listens on; ``DOCKER_HOST`` names another such socket. The command must fail asking the
engine the option named (exit 3, that address in the message), never the default one: a command
that dropped the option on one of its paths (``replay`` of a gateway transcript did) would name
``DOCKER_HOST``'s address instead, or run on whatever engine that is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from detserve.errors import EXIT_ENVIRONMENT, EXIT_INPUT
from detserve.manifest import read_manifest_bytes
from detserve.pins import profile_pins
from detserve.profile import load_profile
from detserve.prompts import load_bundle
from detserve.runlog import write_run_log
from detserve.runlog.models import TranscriptHeader
from detserve.runlog.transcript import TranscriptWriter

from .committed import BUNDLE_DIR, BUNDLE_PIN, CliRunner, TinyWorkspace, sha256_hex
from .runlog_builders import make_sample
from .test_docker_host import ENGINE_COMMANDS
from .test_transcript import exchange

IMAGE = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "5a" * 32
BUNDLE = ("--bundle", str(BUNDLE_DIR), "--bundle-pin", str(BUNDLE_PIN))


@pytest.fixture
def config(tiny_workspace: TinyWorkspace) -> Path:
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = IMAGE
    tiny_workspace.config.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return tiny_workspace.config


def _pins(config: Path) -> object:
    loaded = load_profile(config)
    return profile_pins(
        loaded, manifest_sha256=sha256_hex(read_manifest_bytes(loaded.manifest_path))
    )


def run_log_claim(config: Path, path: Path) -> Path:
    """A valid claim made under exactly the pins of ``config`` (and the reference bundle)."""
    bundle = load_bundle(BUNDLE_DIR, BUNDLE_PIN)
    pins = _pins(config).run_pins(  # type: ignore[attr-defined]
        prompt_bundle_sha256=bundle.sha256, vllm_version="0.32.0"
    )
    header = {
        "pins": pins.model_dump(mode="json"),
        "sampling": {"temperature": 0.0, "seed": 0, "max_tokens": 16, "logprobs": None},
        "n_samples": 1,
    }
    write_run_log(path, header, [make_sample(0, logprobs=False)])
    return path


def transcript_claim(config: Path, path: Path) -> Path:
    """A closed gateway transcript answered under exactly the pins of ``config``."""
    pins = _pins(config).engine_pins(vllm_version="0.32.0")  # type: ignore[attr-defined]
    header = TranscriptHeader(
        pins=pins, previous_sha256=None, seed=0, segment=0, transcript_id="d" * 32
    )
    writer = TranscriptWriter(path, header)
    writer.append(exchange(0))
    writer.close("stopped")
    return path


#: command -> its arguments, given the profile and a scratch directory (all inputs valid)
ARGUMENTS: dict[str, Callable[[Path, Path], list[str | Path]]] = {
    "start": lambda c, d: ["start", "--config", c],
    "wait": lambda c, d: ["wait", "--config", c, "--timeout", "1"],
    "smoke": lambda c, d: ["smoke", "--config", c],
    "stop": lambda c, d: ["stop", "--config", c],
    "run": lambda c, d: ["run", "--config", c, "--timeout", "1"],
    "status": lambda c, d: ["status", "--config", c],
    "logs": lambda c, d: ["logs", "--config", c],
    "sample": lambda c, d: [
        "sample",
        "--config",
        c,
        *BUNDLE,
        "--run-log-output",
        d / "a.runlog.jsonl",
        "--sidecar-output",
        d / "a.sidecar.json",
    ],
    "replay": lambda c, d: [
        "replay",
        "--config",
        c,
        *BUNDLE,
        "--claim",
        run_log_claim(c, d / "claim.runlog.jsonl"),
        "--output-dir",
        d / "replay",
    ],
    "replay-transcript": lambda c, d: [
        "replay",
        "--config",
        c,
        "--claim",
        transcript_claim(c, d / "claim.transcript.jsonl"),
        "--output-dir",
        d / "replay",
    ],
    "env": lambda c, d: ["env", "--config", c],
    "lock-image": lambda c, d: ["lock-image", "--config", c],
    "fleet": lambda c, d: [
        "fleet",
        "--config",
        c,
        *BUNDLE,
        "--claim",
        run_log_claim(c, d / "claim.runlog.jsonl"),
        "--output-dir",
        d / "fleet",
    ],
    "check": lambda c, d: ["check", "--config", c, *BUNDLE, "--output-dir", d / "check"],
    "serve": lambda c, d: ["serve", "--config", c, "--transcript-dir", d / "transcripts"],
}


def test_every_engine_command_is_tried() -> None:
    # doctor reports the engine as a checklist item (test_docker_host.py); the rest exit 3
    assert set(ENGINE_COMMANDS) - {"doctor"} <= {name.split("-transcript")[0] for name in ARGUMENTS}


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_the_engine_named_is_the_engine_asked(
    name: str,
    config: Path,
    tmp_path: Path,
    cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = f"unix://{tmp_path}/default/docker.sock"
    named = f"unix://{tmp_path}/named/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", default)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ran = cli(*ARGUMENTS[name](config, scratch), "--docker-host", named)
    assert ran.code == EXIT_ENVIRONMENT, ran.text
    assert f"the container engine at {named} does not answer" in ran.text, ran.text
    assert default not in ran.text


#: DOCKER_HOST values --docker-host refuses: a path on a TCP URL (the SDK would drop it), a
#: password, a relative socket, and an escape sequence that would be printed as the engine's name
MALFORMED_ENVIRONMENT_HOSTS = (
    "tcp://gpu-1:2376/v1.41",
    "tcp://user:secret@gpu-1:2376",
    "unix://relative/docker.sock",
    "unix:///run/\x1b[2Jdocker.sock",
)


@pytest.mark.parametrize("host", MALFORMED_ENVIRONMENT_HOSTS)
@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_docker_host_in_the_environment_passes_the_rule_of_the_option(
    name: str,
    host: str,
    config: Path,
    tmp_path: Path,
    cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --docker-host, the environment's DOCKER_HOST names the engine: it is checked as the
    option is, and refused by its name (exit 2), before any engine is built."""
    monkeypatch.setenv("DOCKER_HOST", host)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ran = cli(*ARGUMENTS[name](config, scratch))
    assert ran.code == EXIT_INPUT, ran.text
    assert "DOCKER_HOST " in ran.err, ran.text
    assert "is not a Docker host URL" in ran.err, ran.text
    assert "\x1b" not in ran.text
