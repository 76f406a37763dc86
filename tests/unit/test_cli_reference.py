"""docs/reference/cli.md is what the Typer application says, command by command.

The page is regenerated in memory by ``scripts/cli_reference.py`` and compared with the
committed file: a command, an option or a help text changed in the code without ``make schemas``
fails here.
"""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

import pytest

from detserve.cli.catalog import COMMANDS

from .committed import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "reference" / "cli.md"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cli_reference", REPO_ROOT / "scripts" / "cli_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_reference_is_the_generated_one(generator: ModuleType) -> None:
    assert PAGE.read_text(encoding="utf-8") == generator.reference(), (
        "docs/reference/cli.md is stale: run `make schemas` and commit it"
    )


def test_every_command_and_subcommand_has_a_section(generator: ModuleType) -> None:
    headings = re.findall(r"^## (detserve.*)$", PAGE.read_text(encoding="utf-8"), re.M)
    root = generator.application()
    expected = ["detserve"]
    for name, _ in COMMANDS:
        expected.append(f"detserve {name}")
        group = root.commands[name]
        expected += [f"detserve {name} {sub}" for sub in getattr(group, "commands", {})]
    assert headings == expected


def test_each_option_of_a_command_is_on_its_section(generator: ModuleType) -> None:
    text = PAGE.read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## (detserve[^\n]*)\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    root = generator.application()
    sample = root.commands["sample"]
    for param in sample.params:
        if getattr(param, "hidden", False):
            assert f"`{param.opts[0]}" not in sections["detserve sample"]
            continue
        assert any(opt in sections["detserve sample"] for opt in param.opts), param.opts


def test_the_reference_follows_a_changed_help_text(
    generator: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison above can fail: an option whose help changed gives another page."""
    before = generator.reference()
    root = generator.application()
    option = next(param for param in root.commands["verify"].params if "--workers" in param.opts)
    monkeypatch.setattr(option, "help", "Something else.")
    monkeypatch.setattr(generator, "application", lambda: root)
    after = generator.reference()
    assert after != before
    assert "| `--workers <int range>` | Something else. [x>=1] |" in after


def test_every_command_takes_json(generator: ModuleType) -> None:
    # the README says every command has --json; read off the options, like the page's sentence
    root = generator.application()
    ctx = root.make_context("detserve", ["--help"], resilient_parsing=True)
    leaves = [
        (command, command_ctx)
        for command, command_ctx in generator.commands(root, ctx)
        if not getattr(command, "commands", None)
    ]
    assert len(leaves) > 20  # a sanity check of the walk
    without = [
        command_ctx.command_path
        for command, command_ctx in leaves
        if not any("--json" in param.opts for param in command.get_params(command_ctx))
    ]
    assert without == [], f"commands without --json: {without}"
