"""How the console script ends: `verify` and `hash` skip the interpreter's teardown, nothing else.

Skipping it must change nothing a caller sees: the exit status, every byte of stdout and stderr
(block-buffered when they are pipes, so a missing flush loses them), the ``atexit`` handlers.
Each probe runs ``detserve.cli.main()`` as the console script does (``sys.argv``, no ``argv``)
and marks on stderr whether the process ended through ``os._exit``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detserve.cli import app as app_module

from .committed import TINY_CONFIG, TinyWorkspace

_PROBE = """\
import atexit, os, sys
real_exit = os._exit
def ended(code):
    os.write(2, b"ended without teardown\\n")
    real_exit(code)
os._exit = ended
atexit.register(lambda: sys.stdout.write("\\natexit ran\\n"))  # buffered: needs a flush
from detserve.cli import main
sys.argv = ["detserve", *sys.argv[1:]]
main()
"""


def _console_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # Buffered, as by default: with PYTHONUNBUFFERED a missing flush would go unseen.
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
    )


def test_verify_ends_without_teardown_with_its_output_and_atexit_handlers() -> None:
    done = _console_script("verify", "--config", TINY_CONFIG, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.split("\n")[0])["ok"] is True
    assert "atexit ran" in done.stdout
    assert "ended without teardown" in done.stderr


def test_a_failed_verification_still_exits_1_with_its_report(
    tiny_workspace: TinyWorkspace,
) -> None:
    blob = tiny_workspace.blob_of("config.json")
    blob.write_bytes(blob.read_bytes() + b" ")
    done = _console_script("verify", "--config", tiny_workspace.config)
    assert done.returncode == 1, done.stderr
    assert "changed: ./config.json" in done.stderr
    assert "atexit ran" in done.stdout
    assert "ended without teardown" in done.stderr


def test_bad_input_still_exits_2() -> None:
    done = _console_script("verify", "--snapshot", "/nonexistent-snapshot", "--json")
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout.split("\n")[0])["exit_code"] == 2
    assert "ended without teardown" in done.stderr


def test_hash_writes_its_manifest_and_ends_without_teardown(
    tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    output = tmp_path / "out.sha256"
    done = _console_script(
        "hash", "--snapshot", tiny_workspace.snapshot, "--manifest-output", output
    )
    assert done.returncode == 0, done.stderr
    assert output.read_bytes() == tiny_workspace.manifest.read_bytes()
    assert "ended without teardown" in done.stderr


def test_other_commands_end_through_the_interpreter() -> None:
    done = _console_script("config", "validate", "--config", TINY_CONFIG, "--allow-unpinned")
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout
    assert "atexit ran" in done.stdout
    assert "ended without teardown" not in done.stderr


def test_click_is_loaded_only_when_typer_loads_it() -> None:
    probe = "import sys\nimport {}\nsys.stdout.write(str('click' in sys.modules))"
    by_typer = subprocess.run(
        [sys.executable, "-c", probe.format("typer.main")], capture_output=True, text=True
    )
    by_verify = subprocess.run(
        [sys.executable, "-c", probe.format("detserve.cli.app, detserve.cli.commands_trust")],
        capture_output=True,
        text=True,
    )
    assert by_verify.stdout == by_typer.stdout, by_verify.stderr


def test_clicks_errors_are_caught_when_click_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import click

    assert app_module._click_errors("Exit", "Abort") == (
        click.exceptions.Exit,
        click.exceptions.Abort,
    )
    monkeypatch.delitem(sys.modules, "click")
    assert app_module._click_errors("Exit") == ()


@pytest.mark.parametrize(
    "args",
    [
        ("verify", "--config", str(TINY_CONFIG), "--json"),  # emit_json, then the fast exit
        ("verify", "--config", str(TINY_CONFIG)),  # rich's console
        ("config", "options", "--json"),
        ("config", "options"),
        ("--version",),  # the fast path, before typer
        ("--help",),  # the catalogue's help
        ("verify", "--help"),  # typer's rich help
    ],
)
def test_a_closed_stdout_is_exit_3_never_a_verdict(args: tuple[str, ...]) -> None:
    # `detserve verify --json | true`: click and rich exit 1 on a broken pipe, which reads as
    # "verification failed"; the reader is gone before the process starts, so the write fails
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "detserve", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 3, done.stderr
    assert "stdout was closed before the whole result was written" in done.stderr
    assert "Traceback" not in done.stderr
