"""Usage errors are bad input (exit 2), never an internal error (exit 3) or a verdict (exit 1);
a crash is an internal error (exit 3), never a verdict (exit 1) or a pass (exit 0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import pytest

from detserve import api
from detserve.errors import EXIT_ENVIRONMENT, EXIT_INPUT, EXIT_OK, EngineError
from detserve.runtime.docker_engine import DockerEngine

from .committed import (
    BUNDLE_DIR,
    BUNDLE_PIN,
    TINY_MANIFEST,
    TINY_SNAPSHOT,
    CliRunner,
    TinyWorkspace,
)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-command"),
        pytest.param(["no-such-command"], id="unknown-command"),
        pytest.param(["verify", "--bogus"], id="unknown-option"),
        pytest.param(["config", "validate"], id="missing-required-option"),
        pytest.param(["hash", "--workers", "0", "--output", "x"], id="out-of-range-value"),
        pytest.param(["verify", "--workers", "many"], id="not-an-integer"),
        pytest.param(["verify", "--snapshot", str(TINY_SNAPSHOT)], id="snapshot-needs-manifest"),
        pytest.param(
            ["verify", "--config", "c.json", "--snapshot", str(TINY_SNAPSHOT)], id="exclusive"
        ),
        pytest.param(
            ["lock-model", "--config", "c.json", "--output", "o.json"], id="output-no-write"
        ),
    ],
)
def test_usage_errors_exit_2(args: list[str], cli: CliRunner, tmp_path: Path) -> None:
    result = cli(*args)
    assert result.code == EXIT_INPUT, result.text
    assert "internal error" not in result.err


def test_manifest_that_is_a_directory_is_a_usage_error(cli: CliRunner, tmp_path: Path) -> None:
    result = cli("verify", "--snapshot", TINY_SNAPSHOT, "--manifest", tmp_path)
    assert result.code == EXIT_INPUT, result.text
    assert "is a directory" in result.err


def test_version_and_help_exit_0(cli: CliRunner) -> None:
    assert cli("--version").out.startswith("detserve ")
    assert cli("--version").code == EXIT_OK
    assert cli("verify", "--help").code == EXIT_OK
    assert cli("verify", "--snapshot", TINY_SNAPSHOT, "--manifest", TINY_MANIFEST).code == EXIT_OK


# --- options that would weaken a strict run -----------------------------------------------------


@pytest.fixture
def pinned_profile(tiny_workspace: TinyWorkspace) -> Path:
    """The tiny profile with every pin filled: an image digest that exists nowhere is enough,
    because the refusal must come before any engine, registry or server is asked anything."""
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "5a" * 32
    tiny_workspace.config.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return tiny_workspace.config


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--temperature", "0.7"], "--temperature 0.7 is refused: strict sampling is greedy"),
        (["--concurrency", "2"], "--concurrency 2 is refused: strict sampling is sequential"),
        (
            ["--skip-reference-hash-check"],
            "--skip-reference-hash-check is refused: the prompt bundle is always verified",
        ),
    ],
    ids=["temperature", "concurrency", "skip-reference-hash-check"],
)
def test_sample_refuses_weakening_options_before_anything(
    option: list[str],
    message: str,
    pinned_profile: Path,
    cli: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engines: list[str] = []

    def no_engine(cls: type[DockerEngine]) -> DockerEngine:
        engines.append("asked")
        raise EngineError("the test's engine is unreachable")

    monkeypatch.setattr(DockerEngine, "from_env", classmethod(no_engine))
    out = tmp_path / "out"
    result = cli(
        "sample", "--config", pinned_profile, "--bundle", BUNDLE_DIR, "--bundle-pin", BUNDLE_PIN,
        "--run-log-output", out / "x.runlog.jsonl", "--output", out / "x.sidecar.json", *option,
    )  # fmt: skip
    assert result.code == EXIT_INPUT, result.text
    assert f"detserve: error: {message}" in result.err
    assert engines == [], "the engine was asked for before the refusal"
    assert not out.exists(), "nothing is written, not even the output folder"


# --- a crash is an internal error ---------------------------------------------------------------


@pytest.mark.parametrize(
    "crash",
    [RuntimeError("boom"), KeyError("pins"), OSError(5, "Input/output error")],
    ids=["RuntimeError", "KeyError", "OSError"],
)
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_an_unexpected_exception_exits_3_as_an_internal_error(
    crash: Exception, verbose: bool, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never 1, which would read as "verification failed", and never 0."""

    def crashing_verify(*args: object, **kwargs: object) -> NoReturn:
        raise crash

    monkeypatch.setattr(api, "verify", crashing_verify)
    flags = ["--verbose"] if verbose else []
    result = cli(*flags, "verify", "--snapshot", TINY_SNAPSHOT, "--manifest", TINY_MANIFEST)
    assert result.code == EXIT_ENVIRONMENT, result.text
    assert f"detserve: internal error: {type(crash).__name__}: {crash}" in result.err
    assert "this is a bug in detserve; re-run with --verbose and report the traceback" in result.err
    assert result.out == "", "no verdict is printed"
    assert ("Traceback (most recent call last)" in result.err) is verbose
