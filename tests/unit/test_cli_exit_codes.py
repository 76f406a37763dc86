"""Usage errors are bad input (exit 2), never an internal error (exit 3) or a verdict (exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detserve.errors import EXIT_INPUT, EXIT_OK

from .committed import TINY_MANIFEST, TINY_SNAPSHOT, CliRunner


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
