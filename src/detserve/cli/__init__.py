"""The ``detserve`` command line: a thin layer over the core.

Commands parse options, call the core, and print results. The core never prints or exits; it
returns values or raises :class:`detserve.errors.DetserveError`, which :func:`main` turns into a
message on stderr (or a JSON object on stdout with ``--json``) and the error's exit code.

``detserve --version`` is answered here, before typer, rich or any command is imported: CI runs
it often, and the interpreter alone is most of what it costs. Everything else goes to
:mod:`detserve.cli.app` (which holds the typer application, ``detserve.cli.app.app``), imported
only then.
"""

from __future__ import annotations

import sys

from detserve._version import __version__

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``detserve`` console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        # What the typer app's eager --version callback prints, and its exit status.
        sys.stdout.write(f"detserve {__version__}\n")
        sys.exit(0)
    from detserve.cli.app import main as run_app

    run_app(args)
