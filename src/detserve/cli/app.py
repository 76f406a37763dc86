"""The Typer application and the single place where errors become exit codes."""

from __future__ import annotations

import importlib
import io
import sys
import traceback
from typing import Any, NoReturn

import typer

from detserve._version import __version__
from detserve.cli.catalog import COMMANDS, ROOT_HELP
from detserve.errors import EXIT_ENVIRONMENT, EXIT_INPUT, DetserveError, bounded, bounded_lines

#: the settings of the application and of the root-help application built from the catalogue
_APP_SETTINGS: dict[str, Any] = {
    "name": "detserve",
    "help": ROOT_HELP,
    "no_args_is_help": True,
    "pretty_exceptions_enable": False,
    # Docstrings are Markdown: paragraphs reflow to the terminal, indented examples stay as-is.
    "rich_markup_mode": "markdown",
    "add_completion": False,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}

app = typer.Typer(**_APP_SETTINGS)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"detserve {__version__}\n")
        raise typer.Exit()


def _root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show the traceback of an error (for bug reports)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Global options come before the command: ``detserve --verbose verify ...``."""


app.callback()(_root)


# Command modules register themselves on `app` when imported. Trust commands come first:
# `verify` runs before every run, and its start-up counts in what verification costs.
_COMMAND_MODULES = (
    "commands_trust",
    "commands_prompts",
    "commands_locks",
    "commands_download",
    "commands_runs",
    "commands_sample",
    "commands_check",
    "commands_serve",
    "commands_runtime",
    "commands_runlog",
    "commands_attest",
    "commands_fleet",
    "commands_init",
)


def _registered() -> set[str]:
    commands = {info.name for info in app.registered_commands}
    return {name for name in commands | {info.name for info in app.registered_groups} if name}


def _stub() -> None:
    """Never run: the root-help application only lists the commands."""


def _root_help_app() -> typer.Typer:
    """The root options and every command's summary, from the catalogue: no command imported."""
    listing = typer.Typer(**_APP_SETTINGS)
    listing.callback()(_root)
    for name, summary in COMMANDS:
        listing.command(name, help=summary)(_stub)
    return listing


def _register(args: list[str]) -> typer.Typer:
    """The application to run ``args`` with, with the command modules it needs imported.

    Importing a module is not free (the runtime commands import the Docker SDK and httpx: about
    0.3 s), so the command modules are imported in order until the command named in ``args`` is
    known: `detserve verify` does not import what only `detserve start` needs. Without a command
    (``--help``, no arguments, a root option alone) nothing can run but the root's own options,
    so the catalogue's application answers, importing no command at all. An unknown command
    imports every module, so that the error is the full application's.
    """
    wanted = next((arg for arg in args if not arg.startswith("-")), None)
    if wanted is None:
        return _root_help_app()
    for module in _COMMAND_MODULES:
        importlib.import_module(f"detserve.cli.{module}")
        if wanted in _registered():
            break
    return app


# Typer 0.2x raises its own vendored copy of click's exceptions, older Typers click's: catch both,
# or every usage error would read as an internal error (exit 3). Click is looked up, not imported:
# only an older Typer loads it, and importing it for nothing cost every command 12 ms.
def _click_errors(*names: str) -> tuple[type[BaseException], ...]:
    """Click's exception classes of these names, when click is loaded; none otherwise."""
    click = sys.modules.get("click")
    return () if click is None else tuple(getattr(click.exceptions, name) for name in names)


def _caught(typer_name: str, click_name: str) -> tuple[type[BaseException], ...]:
    """Typer's exception class of that name (when this Typer has it), and click's."""
    own = getattr(typer, typer_name, None)
    return (*([own] if own is not None else []), *_click_errors(click_name))


def _show_usage_error(exc: BaseException) -> None:
    # Click's text may quote an option's value (a 20 MiB path): rendered, then bounded.
    show = getattr(exc, "show", None)
    if callable(show):
        rendered = io.StringIO()
        show(file=rendered)
        text = rendered.getvalue()
    else:
        text = f"detserve: error: {exc}"
    sys.stderr.write("\n".join(bounded_lines(text.rstrip("\n").split("\n"))) + "\n")


#: Typer turns Ctrl-C inside a command into ``Exit(130)``, which a non-standalone call returns
#: instead of raising the KeyboardInterrupt; no detserve command exits 130 by itself.
_TYPER_INTERRUPTED = 130


def _interrupted() -> NoReturn:
    from detserve.cli.output import say

    say("detserve: interrupted; nothing was written")
    sys.exit(EXIT_ENVIRONMENT)


def _print_traceback() -> None:
    """The traceback of the exception being handled (``--verbose``), each line escaped: the
    messages of the exceptions in it may quote a received value."""
    from detserve.cli.output import say_lines

    say_lines(traceback.format_exc().rstrip("\n"))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``detserve`` console script."""
    args = sys.argv[1:] if argv is None else argv
    from detserve.cli.output import escape_library_output

    escape_library_output()
    verbose = "--verbose" in args or "-v" in args
    json_mode = "--json" in args
    application = _register(args)
    try:
        try:
            code = application(args=args, prog_name="detserve", standalone_mode=False)
        except SystemExit as ended:
            # Click and typer's rich help meet a closed stdout with exit 1, a verdict's code
            # (help never exits 1 otherwise): say what happened instead, as for detserve's own
            # output (exit 3).
            pacified = type(sys.stdout).__name__ == "PacifyFlushWrapper"
            if ended.code == 1 and (pacified or "--help" in args or "-h" in args):
                from detserve.cli.output import stdout_closed

                stdout_closed()
            raise
    except DetserveError as exc:
        from detserve.cli.output import emit_json, say_lines

        if verbose:
            _print_traceback()
        if json_mode:
            emit_json(exc.as_json())
        # Each line escaped again: a field set after the error was made (a hint added where it
        # was caught) was never bounded, and escaping twice changes nothing.
        say_lines(f"detserve: error: {exc.diagnostics()}")
        sys.exit(exc.exit_code)
    except _caught("Exit", "Exit") as exc:
        code = getattr(exc, "exit_code", 0)
    except _caught("Abort", "Abort"):
        _interrupted()
    except _caught("TyperException", "ClickException") as exc:
        _show_usage_error(exc)
        sys.exit(EXIT_INPUT)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:  # noqa: BLE001
        from detserve.cli.output import say_lines

        # A bug. Never exit 1 here: a crash must not read as a verification verdict.
        if verbose:
            _print_traceback()
        say_lines(
            f"detserve: internal error: {exc.__class__.__name__}: {bounded(str(exc))}\n"
            "  this is a bug in detserve; re-run with --verbose and report the traceback"
        )
        sys.exit(EXIT_ENVIRONMENT)
    if code == _TYPER_INTERRUPTED:
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)
