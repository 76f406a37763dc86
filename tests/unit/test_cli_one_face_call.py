"""Every CLI command is: parse its options, one call of the face (:mod:`detserve.api`), render.

Read from the source: each function registered as a command is walked path by path (each
branch of an ``if`` on its own, a ``return`` or ``raise`` ending its path, a loop's body counted
as run twice), following the CLI's own helpers it calls, and on no path may it call more than one
of the face's functions. Reading the profile that ``--config`` names (``load_profile``) is the
parsing of that option, so it is not the command's call. Everything else a command does on the
way is the CLI's: options, progress, output.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import detserve.cli

CLI_DIR = Path(detserve.cli.__file__).parent
#: the option parser's, not the command's call (see the module's docstring)
PARSING = frozenset({"load_profile"})


def _is_face_function(module: str, name: str) -> bool:
    value = getattr(importlib.import_module(module), name, None)
    return inspect.isfunction(value) and name not in PARSING


@dataclass
class CliModule:
    """One CLI module: its functions, and which names in it mean a face function or a CLI
    module."""

    name: str
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    face_names: set[str] = field(default_factory=set)  # bare names bound to face functions
    face_modules: set[str] = field(default_factory=set)  # names bound to detserve.api (modules)
    cli_modules: dict[str, str] = field(default_factory=dict)  # name -> detserve.cli.X

    @classmethod
    def read(cls, path: Path) -> CliModule:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = cls(name=f"detserve.cli.{path.stem}")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                found.functions.setdefault(node.name, node)
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            for alias in node.names:
                bound = alias.asname or alias.name
                if node.module == "detserve" and alias.name == "api":
                    found.face_modules.add(bound)
                elif node.module.startswith("detserve.api"):
                    if _is_face_function(node.module, alias.name):
                        found.face_names.add(bound)
                elif node.module == "detserve.cli":
                    found.cli_modules[bound] = f"detserve.cli.{alias.name}"
        return found


MODULES = {
    module.name: module
    for module in (CliModule.read(path) for path in sorted(CLI_DIR.glob("*.py")))
}


def _commands() -> Iterator[tuple[str, ast.FunctionDef]]:
    for module in MODULES.values():
        for function in module.functions.values():
            for decorator in function.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(target, ast.Attribute) and target.attr == "command":
                    yield f"{module.name}.{function.name}", function


class Paths:
    """The most face calls on any path through a function, its CLI helpers followed."""

    def __init__(self, module: CliModule) -> None:
        self.module = module
        self.stack: list[str] = []

    def calls_in(self, node: ast.AST) -> int:
        """Face calls in an expression (every part of it may run)."""
        count = 0
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                count += self._call(sub.func)
        return count

    def _call(self, func: ast.expr) -> int:
        module = self.module
        if isinstance(func, ast.Name):
            if func.id in module.face_names:
                return 1
            if func.id in module.functions:
                return self.most(module, module.functions[func.id])
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            owner = func.value.id
            if owner in module.face_modules:
                return int(_is_face_function("detserve.api", func.attr))
            if owner in module.cli_modules:
                other = MODULES[module.cli_modules[owner]]
                if func.attr in other.functions:
                    return self.most(other, other.functions[func.attr])
        return 0

    def most(self, module: CliModule, function: ast.FunctionDef) -> int:
        key = f"{module.name}.{function.name}"
        if key in self.stack:  # recursion: counted once
            return 0
        self.stack.append(key)
        inner = Paths(module)
        inner.stack = self.stack
        ended, going = inner.block(function.body, 0)
        self.stack.pop()
        return max(ended, going if going is not None else 0)

    def block(self, statements: list[ast.stmt], before: int) -> tuple[int, int | None]:
        """(most on a path that ended inside, most on a path that goes on; None: none does)."""
        ended = 0
        going: int | None = before
        for statement in statements:
            if going is None:
                break
            ended_here, going = self.statement(statement, going)
            ended = max(ended, ended_here)
        return ended, going

    def statement(self, node: ast.stmt, before: int) -> tuple[int, int | None]:
        if isinstance(node, (ast.Return, ast.Raise)):
            return before + self.calls_in(node), None
        if isinstance(node, ast.If):
            at_test = before + self.calls_in(node.test)
            ended_a, going_a = self.block(node.body, at_test)
            ended_b, going_b = self.block(node.orelse, at_test)
            goings = [going for going in (going_a, going_b) if going is not None]
            return max(ended_a, ended_b), max(goings) if goings else None
        if isinstance(node, (ast.With, ast.AsyncWith)):
            entered = before + sum(self.calls_in(item.context_expr) for item in node.items)
            return self.block(node.body, entered)
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            head = self.calls_in(node.iter if not isinstance(node, ast.While) else node.test)
            ended, going = self.block(node.body, 0)
            once = max(ended, going or 0)
            return 0, before + head + 2 * once  # a loop may run its body again
        if isinstance(node, ast.Try):
            ended, going = self.block(node.body, before)
            start = max(ended, going or before)
            for handler in node.handlers:
                ended_h, going_h = self.block(handler.body, start)
                ended = max(ended, ended_h)
                going = max(going or 0, going_h) if going_h is not None else going
            ended_f, going = self.block(node.finalbody, going if going is not None else start)
            return max(ended, ended_f), going
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return 0, before  # defined here, called (and counted) where it is called
        return 0, before + self.calls_in(node)


COMMANDS = dict(_commands())


def _registered() -> set[str]:
    """Every command the app runs, as ``module.function``, from the real app's command tree."""
    import typer

    from detserve.cli.app import _register

    app = _register(["an-unknown-command"])  # imports every command module
    found: set[str] = set()
    pending: list[Any] = [typer.main.get_command(app)]
    while pending:
        command = pending.pop()
        if hasattr(command, "commands"):  # a group (Typer may carry its own copy of Click)
            pending.extend(command.commands.values())
        elif command.callback is not None:
            callback = inspect.unwrap(command.callback)
            found.add(f"{callback.__module__}.{callback.__name__}")
    return found


def test_every_command_is_read() -> None:
    # a registration this walk did not see would pass unread
    assert set(COMMANDS) == _registered()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_makes_one_call_of_the_face(command: str) -> None:
    module = MODULES[command.rsplit(".", 1)[0]]
    function = COMMANDS[command]
    most = Paths(module).most(module, function)
    assert most <= 1, f"{command} calls the face {most} times on one path: its work is the face's"


def _counted(source: str) -> int:
    tree = ast.parse(source)
    module = CliModule(name="detserve.cli.example", face_modules={"api"})
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            module.functions[node.name] = node
    return Paths(module).most(module, module.functions["command"])


@pytest.mark.parametrize(
    ("source", "most"),
    [
        ("def command():\n    api.run(1)\n    api.sample(2)\n", 2),
        ("def command():\n    if x:\n        api.run(1)\n    else:\n        api.sample(2)\n", 1),
        ("def command():\n    if x:\n        api.run(1)\n        return\n    api.sample(2)\n", 1),
        ("def command():\n    if x:\n        api.run(1)\n    api.sample(2)\n", 2),
        ("def command():\n    for x in y:\n        api.run(x)\n", 2),
        ("def command():\n    helper()\n    api.sample(2)\n\ndef helper():\n    api.run(1)\n", 2),
        ("def command():\n    with api.run(1):\n        api.sample(2)\n", 2),
        ("def command():\n    api.load_profile(1)\n    api.sample(2)\n", 1),
        ("def command():\n    api.ProfileOptions()\n    api.sample(2)\n", 1),
        ("def command():\n    try:\n        api.run(1)\n    finally:\n        api.stop()\n", 2),
    ],
)
def test_the_walk_counts_what_a_path_calls(source: str, most: int) -> None:
    assert _counted(source) == most
