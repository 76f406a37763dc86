"""The ``detserve`` command line: a thin layer over the core.

Commands parse options, call the core, and print results. The core never prints or exits; it
returns values or raises :class:`detserve.errors.DetserveError`, which :func:`main` turns into a
message on stderr (or a JSON object on stdout with ``--json``) and the error's exit code.

``detserve --version`` is answered here, before typer, rich or any command is imported: CI runs
it often, and the interpreter alone is most of what it costs. Everything else goes to
:mod:`detserve.cli.app` (which holds the typer application, ``detserve.cli.app.app``), imported
only then.

``detserve verify`` and ``detserve hash``, run as the console script, end without the
interpreter's teardown (freeing every module and object: about 30 ms, a seventh of verifying the
tiny model; docs/performance.md). They have joined their threads and closed what they wrote when
they return; their output is flushed and the ``atexit`` handlers run first, as at any exit, and a
failed flush (a closed pipe) falls back to the interpreter's own exit, which reports it.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from detserve._version import __version__

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``detserve`` console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        # What the typer app's eager --version callback prints, and its exit status.
        try:
            sys.stdout.write(f"detserve {__version__}\n")
            sys.stdout.flush()
        except BrokenPipeError:
            from detserve.cli.output import stdout_closed_exit

            stdout_closed_exit()
        sys.exit(0)
    from detserve.cli.app import main as run_app

    command = next((arg for arg in args if not arg.startswith("-")), None)
    if argv is not None or command not in _ENDS_WITHOUT_TEARDOWN:
        # A caller in this process (the tests) gets SystemExit, never a process that ends.
        run_app(args)
        return
    try:
        run_app(args)
    except SystemExit as ended:
        _end_without_teardown(ended)


#: commands whose every thread is joined and every output closed when they return
_ENDS_WITHOUT_TEARDOWN = frozenset({"verify", "hash"})


def _end_without_teardown(ended: SystemExit) -> NoReturn:
    """End the process as ``ended`` would, less the interpreter's teardown."""
    import atexit
    import threading

    if not (ended.code is None or isinstance(ended.code, int)):
        raise ended  # sys.exit("text"): the interpreter prints the text
    for thread in threading.enumerate():  # what the interpreter waits for before it exits
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # each handler runs once: they are cleared as they run
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        raise ended from None  # a closed pipe: the interpreter reports it, and exits 120
    os._exit(ended.code or 0)
