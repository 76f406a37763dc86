"""The fast paths of the CLI's start-up answer exactly what the full application would.

``detserve --version`` is answered before typer is imported, and the root help is built from
``detserve.cli.catalog`` without importing a command module; these tests hold both to the full
application's output, so that neither can drift. (How fast they are is measured by
``make bench-cli``, never by a timed test.)
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import typer
import typer.main

from detserve.cli import app as app_module
from detserve.cli.catalog import COMMANDS
from detserve.errors import EXIT_INPUT, EXIT_OK

from .committed import CliRunner


def _full_app() -> typer.Typer:
    for module in app_module._COMMAND_MODULES:
        importlib.import_module(f"detserve.cli.{module}")
    return app_module.app


def _render(application: typer.Typer, args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    application(args=args, prog_name="detserve", standalone_mode=False)
    return capsys.readouterr().out


def test_the_catalogue_lists_exactly_the_registered_commands() -> None:
    group = typer.main.get_command(_full_app())
    assert isinstance(group, typer.main.TyperGroup)
    registered = list(group.commands)
    assert [name for name, _ in COMMANDS] == registered
    for name, summary in COMMANDS:
        command = group.commands[name]
        first_paragraph = (command.help or "").split("\n\n")[0].strip()
        assert summary == first_paragraph, name


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--verbose", "--help"]])
def test_the_root_help_is_the_full_applications(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    full = _render(_full_app(), args, capsys)
    fast = _render(app_module._root_help_app(), args, capsys)
    assert fast == full
    for name, _ in COMMANDS:
        assert f" {name} " in fast


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], EXIT_OK),
        (["--version"], EXIT_OK),
        ([], EXIT_INPUT),
        (["--verbose"], EXIT_INPUT),
        (["--no-such-option"], EXIT_INPUT),
    ],
)
def test_without_a_command_the_exit_status_is_unchanged(
    args: list[str], code: int, cli: CliRunner
) -> None:
    assert cli(*args).code == code


def _imported_after(args: list[str]) -> set[str]:
    probe = (
        "import sys\n"
        "from detserve.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(done.stderr.split())


def test_version_imports_neither_typer_nor_rich() -> None:
    modules = _imported_after(["--version"])
    assert not {"typer", "click", "rich", "pydantic"} & modules


def test_root_help_imports_no_command_module() -> None:
    modules = _imported_after(["--help"])
    assert not {m for m in modules if m.startswith("detserve.cli.commands_")}
    assert not {"docker", "httpx", "pydantic", "huggingface_hub"} & modules


def test_verify_imports_no_runtime_dependency() -> None:
    modules = _imported_after(["verify", "--help"])
    assert not {"docker", "httpx", "huggingface_hub"} & modules
