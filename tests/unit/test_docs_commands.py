"""Every command the README shows is run by a test, and the seed-workflow page names real commands.

The README's fenced shell blocks are read command by command (continuation lines joined, the
comment after ``#`` kept: ``# exit 2`` is the exit status the README promises). Each one is
exactly one of:

- ``make TARGET``: the Makefile has the target;
- a ``detserve`` command that needs nothing but this checkout (:data:`RUN_HERE`): run here, as
  typed, from the repository's root, and its exit status must be the README's;
- a ``detserve`` command that needs a Docker engine (:data:`RUN_ELSEWHERE`): parsed by the real
  command-line parser (so every option exists and takes what it is given), and the test or script
  named for it must invoke the same command with every option the README shows.

A command that is none of these fails the test: there is no list of commands left out. The same
parser reads every ``detserve`` command of the seed-workflow page (docs/seed-workflow.md).
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from .committed import REPO_ROOT

README = REPO_ROOT / "README.md"
SEED_PAGE = REPO_ROOT / "docs" / "seed-workflow.md"
MAKEFILE = REPO_ROOT / "Makefile"

#: detserve commands (by their command words) the README may show and this test runs here
RUN_HERE = frozenset({("verify",), ("prompts", "verify"), ("config", "validate")})
#: commands that need a Docker engine: where each is run, with the options the README shows
RUN_ELSEWHERE: dict[tuple[str, ...], tuple[str, ...]] = {
    ("lock-image",): ("tests/integration/test_sampling.py", "scripts/demo.sh"),
    ("run",): ("tests/integration/test_ci_recipe_real.py", "scripts/demo.sh"),
    ("sample",): ("tests/integration/test_ci_recipe_real.py", "scripts/demo.sh"),
    ("stop",): ("tests/integration/test_ci_recipe_real.py", "scripts/demo.sh"),
    ("eval-determinism",): ("tests/integration/test_gateway_real.py", "scripts/demo.sh"),
}


@dataclass(frozen=True)
class ShownCommand:
    """One command of a fenced shell block: its words and the exit status its comment names."""

    words: tuple[str, ...]
    exit_code: int
    line: int

    def __str__(self) -> str:
        return f"line {self.line}: {shlex.join(self.words)}"


def split_comment(line: str) -> tuple[str, str]:
    """A shell line's command and its comment: from a ``#`` that starts a word, outside quotes."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index], line[index + 1 :]
    return line, ""


def shell_commands(markdown: str) -> list[ShownCommand]:
    """The commands of every ``sh``/``bash``/``shell``/``console`` block of ``markdown``."""
    commands: list[ShownCommand] = []
    lines = markdown.splitlines()
    in_block = False
    pending, start = "", 0
    for number, line in enumerate(lines, start=1):
        fence = re.match(r"^```(\w*)", line)
        if fence:
            in_block = not in_block and fence.group(1) in {"sh", "bash", "shell", "console"}
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text, pending = pending + line, ""
        command, comment = split_comment(text)
        words = shlex.split(command)
        if words:
            # the comment is prose, and may name the exit status
            promised = re.match(r"\s*exit (\d)\b", comment)
            code = int(promised.group(1)) if promised else 0
            commands.append(ShownCommand(tuple(words), code, start))
    assert not in_block, "a fenced block is not closed"
    return commands


@cache
def application() -> Any:
    """The click command behind ``detserve``, with every command module registered."""
    import typer

    from detserve.cli import app as cli_app

    for module in cli_app._COMMAND_MODULES:
        importlib.import_module(f"detserve.cli.{module}")
    return typer.main.get_command(cli_app.app)


def command_words(args: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The command words of ``detserve ARGS`` (``("prompts", "verify")``), and the rest."""
    command, index = application(), 0
    while index < len(args) and args[index] in getattr(command, "commands", {}):
        command = command.commands[args[index]]
        index += 1
    return args[:index], args[index:]


def parse(args: tuple[str, ...]) -> dict[str, Any]:
    """The parameters the real parser makes of ``detserve ARGS``; a usage error raises."""
    words, rest = command_words(args)
    command = application()
    for word in words:
        command = command.commands[word]
    assert not getattr(command, "commands", None), f"{shlex.join(args)} names no command"
    ctx = command.make_context(" ".join(("detserve", *words)), list(rest))
    return dict(ctx.params)


def options(args: tuple[str, ...]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}


def invocations(where: Path, words: tuple[str, ...]) -> list[set[str]]:
    """The option names of each invocation of ``detserve WORDS`` in a script or a test file."""
    text = where.read_text(encoding="utf-8")
    found: list[set[str]] = []
    if where.suffix == ".sh":
        joined = text.replace("\\\n", " ")
        for line in joined.splitlines():
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            for i, token in enumerate(tokens):
                if (
                    token in {"$DETSERVE", "detserve"}
                    and tuple(tokens[i + 1 : i + 1 + len(words)]) == words
                ):
                    found.append(options(tuple(tokens[i + 1 :])))
        return found
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call):
            continue
        # detserve("sample", "--config", profile, ...): the command words first, as literals
        head = node.args[: len(words)]
        if tuple(arg.value if isinstance(arg, ast.Constant) else None for arg in head) == words:
            literals = (arg.value for arg in node.args if isinstance(arg, ast.Constant))
            found.append(options(tuple(str(value) for value in literals)))
    return found


def makefile_targets() -> set[str]:
    text = MAKEFILE.read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", text, re.M))


README_COMMANDS = shell_commands(README.read_text(encoding="utf-8"))


def test_the_readme_shows_commands() -> None:
    shown = {command.words[:2] for command in README_COMMANDS}
    assert ("make", "demo") in shown
    assert ("make", "test") in shown
    assert any(command.words[0] == "detserve" for command in README_COMMANDS)


@pytest.mark.parametrize("shown", README_COMMANDS, ids=str)
def test_every_readme_command_is_run_by_a_test(shown: ShownCommand) -> None:
    program, *args = shown.words
    if program == "make":
        assert len(args) == 1, shown
        assert args[0] in makefile_targets(), f"{shown}: the Makefile has no target {args[0]}"
        return
    assert program == "detserve", f"{shown}: neither `make` nor `detserve`"
    words, _ = command_words(tuple(args))
    if words in RUN_HERE:
        ran = subprocess.run(
            [sys.executable, "-m", "detserve", *args],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert ran.returncode == shown.exit_code, (str(shown), ran.stdout, ran.stderr)
        assert "Traceback" not in ran.stderr, ran.stderr
        return
    assert words in RUN_ELSEWHERE, (
        f"{shown}: add its command words to RUN_HERE (when this checkout is enough to run it) "
        "or to RUN_ELSEWHERE, naming the tests that run it"
    )
    parse(tuple(args))
    wanted = options(tuple(args))
    for name in RUN_ELSEWHERE[words]:
        runs = invocations(REPO_ROOT / name, words)
        assert any(wanted <= given for given in runs), (
            f"{shown}: {name} runs `detserve {' '.join(words)}` with none of its calls "
            f"passing all of {sorted(wanted)} (it passes {runs})"
        )


def seed_page_commands() -> list[tuple[str, ...]]:
    """Every ``detserve ...`` inline code span of the seed-workflow page."""
    text = SEED_PAGE.read_text(encoding="utf-8")
    spans = re.findall(r"`(detserve [^`]+)`", text)
    return [tuple(shlex.split(span)[1:]) for span in spans if " --" in span]


def test_the_seed_page_maps_every_seed_command() -> None:
    text = SEED_PAGE.read_text(encoding="utf-8")
    for seed in ("run", "start", "wait", "smoke", "hash", "verify", "stop", "lock-model",
                 "lock-image", "eval-determinism"):  # fmt: skip
        assert re.search(rf"^\| `workflow\.sh {seed} ", text, re.M), seed
    assert re.search(r"^\| `generate_tokens\.sh ", text, re.M)


@pytest.mark.parametrize("args", seed_page_commands(), ids=shlex.join)
def test_the_seed_page_names_real_commands_and_options(args: tuple[str, ...]) -> None:
    parse(args)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("sample", "--config", "P", "--run-log", "L", "--sidecar-output", "S"), "No such option"),
        (("sample", "--config", "P", "--sidecar-output", "S"), "Missing parameter"),
        (("prompts", "check", "--config", "P"), "names no command"),
        (("wait", "--config", "P", "--timeout", "soon"), "valid number"),
    ],
    ids=["unknown-option", "required-option-missing", "unknown-command", "not-a-number"],
)
def test_the_parser_refuses_what_the_cli_refuses(args: tuple[str, ...], said: str) -> None:
    """The check above can fail: commands detserve would refuse do not parse."""
    with pytest.raises(Exception, match=said):  # click's and typer's usage errors alike
        parse(args)


def test_the_places_named_for_a_command_are_checked(tmp_path: Path) -> None:
    """A test or script that does not pass the README's options does not count as running it."""
    script = tmp_path / "demo.sh"
    script.write_text('"$DETSERVE" sample --config "$P" \\\n  --run-log-output x\n')
    assert invocations(script, ("sample",)) == [{"--config", "--run-log-output"}]
    test = tmp_path / "test_x.py"
    test.write_text('detserve("sample", "--config", p, "--n-prompts", "2")\ncli("run", x)\n')
    assert invocations(test, ("sample",)) == [{"--config", "--n-prompts"}]
    assert invocations(test, ("stop",)) == []
