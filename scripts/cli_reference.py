"""Print docs/reference/cli.md: every ``detserve`` command, its help and its options, from the app.

The page is read off the Typer application itself (every command module imported, then Typer's
click command tree walked), never written by hand: a command, an option or a help text added to
the code is on the page once this script runs. ``make schemas`` writes the file;
tests/unit/test_cli_reference.py regenerates it in memory and requires the committed file to be
the same bytes, so the reference cannot drift from the code.

Each command's help is its docstring, which the CLI already renders as Markdown (Typer's
``rich_markup_mode="markdown"``): it goes on the page as is. Options are taken from each
parameter's own help record (names, value kind, help, default, range, required), as ``--help``
shows them, less the terminal's line wrapping; hidden options (the deprecated ``--output``)
stay hidden here too.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TITLE = "# Command-line reference"
INTRO = (
    "Generated from the Typer application by `scripts/cli_reference.py` (`make schemas`); "
    "a unit test regenerates it and requires this file to be the same, so it is what "
    "`detserve CMD --help` says, command by command. Results go to stdout, progress and "
    "diagnostics to stderr; `detserve --verbose CMD` shows a traceback on error. Exit codes, "
    "the same for every command: 0 ok, 1 verification failed, 2 bad input, 3 environment "
    "([exit codes](../exit-codes.md))."
)


def application() -> Any:
    """The click command behind ``detserve``, with every command module registered."""
    import typer

    from detserve.cli import app as cli_app

    for module in cli_app._COMMAND_MODULES:
        importlib.import_module(f"detserve.cli.{module}")
    return typer.main.get_command(cli_app.app)


def commands(command: Any, ctx: Any) -> Iterator[tuple[Any, Any]]:
    """(command, context) for ``command`` and every command below it, in the order of --help."""
    yield command, ctx
    for name, sub in getattr(command, "commands", {}).items():
        if getattr(sub, "hidden", False):
            continue
        yield from commands(sub, sub.make_context(name, [], parent=ctx, resilient_parsing=True))


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, no cell separator, no HTML."""
    text = " ".join(text.split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def _code(text: str) -> str:
    """An inline code span for ``text`` (which holds no backquote), safe in a table cell."""
    assert "`" not in text, text
    return "`" + text.replace("|", "\\|") + "`"


def section(command: Any, ctx: Any) -> list[str]:
    path = ctx.command_path
    lines = [f"## {path}", ""]
    help_text = (command.help or "").strip("\n")
    lines += [line.rstrip() for line in help_text.splitlines()]
    usage = " ".join([path, *command.collect_usage_pieces(ctx)])
    lines += ["", f"Usage: {_code(usage)}", ""]
    subcommands = [
        (name, sub) for name, sub in getattr(command, "commands", {}).items() if not sub.hidden
    ]
    if subcommands:
        lines += ["| command | what it does |", "| --- | --- |"]
        for name, sub in subcommands:
            anchor = f"{path} {name}".replace(" ", "-")
            summary = _cell(sub.get_short_help_str(limit=10_000))
            lines.append(f"| [`{path} {name}`](#{anchor}) | {summary} |")
        lines.append("")
    records = [
        record for param in command.get_params(ctx) if (record := param.get_help_record(ctx))
    ]
    if records:
        lines += ["| option | meaning |", "| --- | --- |"]
        lines += [f"| {_code(names)} | {_cell(text)} |" for names, text in records]
        lines.append("")
    return lines


def _json_sentence(leaves: list[tuple[Any, Any]]) -> str:
    """Which commands take ``--json``, read off their options (never a claim written by hand)."""
    without = [
        ctx.command_path
        for command, ctx in leaves
        if not any("--json" in param.opts for param in command.get_params(ctx))
    ]
    if not without:
        return "Every command takes `--json`: one JSON object on stdout, for machines."
    named = ", ".join(f"`{path}`" for path in without)
    return f"Every command but {named} takes `--json`: one JSON object on stdout, for machines."


def reference() -> str:
    root = application()
    ctx = root.make_context("detserve", ["--help"], resilient_parsing=True)
    every = list(commands(root, ctx))
    leaves = [(command, ctx) for command, ctx in every if not getattr(command, "commands", None)]
    lines = [TITLE, "", INTRO, "", _json_sentence(leaves), ""]
    for command, command_ctx in every:
        lines += section(command, command_ctx)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    page = reference()
    if len(sys.argv) > 1:
        target = Path(sys.argv[1])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
