"""``--docker-host``: every command that talks to an engine takes it, and an engine that does not
answer there is exit 3 naming the address, whichever command asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main

from detserve.cli.app import _COMMAND_MODULES, app
from detserve.errors import EXIT_ENVIRONMENT, EXIT_INPUT, UsageError
from detserve.fleet import parse_node
from detserve.runtime.docker_engine import DEFAULT_DOCKER_HOST, docker_address

from .committed import CliRunner, TinyWorkspace

#: every command that asks a container engine anything
ENGINE_COMMANDS = (
    "start",
    "wait",
    "smoke",
    "stop",
    "run",
    "status",
    "logs",
    "sample",
    "replay",
    "env",
    "doctor",
    "lock-image",
    "fleet",
    "check",
    "serve",
)


def _commands() -> dict[str, object]:
    import importlib

    for module in _COMMAND_MODULES:
        importlib.import_module(f"detserve.cli.{module}")
    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ENGINE_COMMANDS)
def test_every_engine_command_takes_docker_host(name: str) -> None:
    command = _commands()[name]
    options = {opt for param in command.params for opt in param.opts}  # type: ignore[attr-defined]
    assert "--docker-host" in options


def test_commands_without_an_engine_do_not_take_it() -> None:
    command = _commands()["verify"]
    options = {opt for param in command.params for opt in param.opts}  # type: ignore[attr-defined]
    assert "--docker-host" not in options


@pytest.fixture
def pinned_profile(tiny_workspace: TinyWorkspace) -> Path:
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "5a" * 32
    tiny_workspace.config.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return tiny_workspace.config


@pytest.mark.parametrize(
    "command", ["status", "start", "stop", "smoke", "logs", "env", "lock-image"]
)
def test_an_engine_that_does_not_answer_is_exit_3_naming_the_address(
    command: str, cli: CliRunner, pinned_profile: Path, tmp_path: Path
) -> None:
    address = f"unix://{tmp_path}/node9/docker.sock"
    ran = cli(command, "--config", pinned_profile, "--docker-host", address)
    assert ran.code == EXIT_ENVIRONMENT, ran.text
    assert f"the container engine at {address} does not answer" in ran.err, ran.text


def test_doctor_names_the_address_in_its_engine_item(
    cli: CliRunner, pinned_profile: Path, tmp_path: Path
) -> None:
    address = f"unix://{tmp_path}/node9/docker.sock"
    ran = cli("doctor", "--config", pinned_profile, "--docker-host", address, "--json")
    items = {item["name"]: item for item in json.loads(ran.out)["items"]}
    assert items["engine reachable"]["status"] == "FAIL"
    assert address in items["engine reachable"]["detail"]


#: addresses that name no engine detserve may connect to, each for another reason
MALFORMED_HOSTS = (
    "/var/run/docker.sock",
    "ftp://host",
    "unix://",
    "unix://relative/docker.sock",
    "node2",
    "tcp://",
    "tcp://:2376",
    "tcp://host:notaport",
    "tcp://host:99999",
    "tcp://host:2376/v1.41",
    "tcp://host:2376?x=1",
    "tcp://user:secret@host:2376",
    "tcp://ho st:2376",
    "tcp://host\n:2376",
    "tcp://-host:2376",
    "ssh://user:pw@host",
    "ssh://us er@host",
    "ssh://" + "h" * 2000,
)


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
def test_a_malformed_docker_host_is_bad_input(
    host: str, cli: CliRunner, pinned_profile: Path
) -> None:
    ran = cli("status", "--config", pinned_profile, "--docker-host", host)
    assert ran.code == EXIT_INPUT, ran.text
    assert "is not a Docker host URL" in ran.err


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
def test_a_fleet_node_is_checked_as_a_docker_host_is(host: str) -> None:
    """One validator: what --docker-host refuses, --node refuses too (before any engine)."""
    with pytest.raises(UsageError) as as_option:
        docker_address(host)
    with pytest.raises(UsageError) as as_node:
        parse_node(f"{host},name=n2" if "," not in host else host, 1)
    assert "is not a Docker host URL" in as_option.value.message
    assert "is not a Docker host URL" in as_node.value.message
    assert as_node.value.message.startswith("--node ")


@pytest.mark.parametrize(
    "host",
    [
        "unix:///var/run/docker.sock",
        "unix:///run/detserve-node2/docker.sock",
        "tcp://127.0.0.1:2375",
        "tcp://gpu-node-1.example:2376",
        "tcp://[::1]:2375",
        "https://10.0.0.5:2376",
        "ssh://operator@gpu-node-1",
        "ssh://gpu-node-1:2222",
        "npipe:////./pipe/docker_engine",
    ],
)
def test_well_formed_addresses_pass_both_ways(host: str) -> None:
    assert docker_address(host) == host
    assert parse_node(f"{host},name=n1", 1).docker_host == host


def test_the_option_wins_over_docker_host_in_the_environment() -> None:
    environment = {"DOCKER_HOST": "tcp://elsewhere:2376"}
    assert docker_address("unix:///run/n2.sock", environment) == "unix:///run/n2.sock"
    assert docker_address(None, environment) == "tcp://elsewhere:2376"


def test_without_either_the_current_docker_context_names_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from docker.context import ContextAPI

    config = tmp_path / "docker-config"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    environment = {"DOCKER_CONFIG": str(config)}
    assert docker_address(None, environment) == DEFAULT_DOCKER_HOST
    # the SDK files contexts beside an existing config.json
    (config / "config.json").write_text("{}")
    ContextAPI.create_context("node2", host="unix:///run/detserve-node2/docker.sock")
    (config / "config.json").write_text(json.dumps({"currentContext": "node2"}))
    assert docker_address(None, environment) == "unix:///run/detserve-node2/docker.sock"
    named = {**environment, "DOCKER_CONTEXT": "default"}
    assert docker_address(None, named) == DEFAULT_DOCKER_HOST


def test_an_engine_and_a_host_together_are_refused() -> None:
    from detserve.runtime.connect import engine_for
    from detserve.runtime.docker_engine import DockerEngine

    engine = DockerEngine(client=None, address="x")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        engine_for(engine, "unix:///run/n2.sock")


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
def test_docker_host_in_the_environment_is_checked_as_the_option_is(host: str) -> None:
    with pytest.raises(UsageError) as refused:
        docker_address(None, {"DOCKER_HOST": host})
    assert refused.value.message.startswith("DOCKER_HOST ")
    assert "is not a Docker host URL" in refused.value.message


def test_the_current_docker_context_is_checked_as_the_option_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from docker.context import ContextAPI

    config = tmp_path / "docker-config"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    (config / "config.json").write_text("{}")
    ContextAPI.create_context("odd", host="tcp://gpu-1:2376/v1.41")
    (config / "config.json").write_text(json.dumps({"currentContext": "odd"}))
    with pytest.raises(UsageError) as refused:
        docker_address(None, {"DOCKER_CONFIG": str(config)})
    assert refused.value.message.startswith("the current Docker context's host ")


def test_doctor_refuses_a_malformed_docker_host_in_the_environment(
    cli: CliRunner, pinned_profile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://gpu-1:2376/v1.41")
    ran = cli("doctor", "--config", pinned_profile, "--json")
    assert ran.code == EXIT_INPUT, ran.text
    assert "DOCKER_HOST 'tcp://gpu-1:2376/v1.41' is not a Docker host URL" in ran.err, ran.text
