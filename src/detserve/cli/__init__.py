"""The ``detserve`` command line: a thin layer over the core.

Commands parse options, call the core, and print results. The core never prints or exits; it
returns values or raises :class:`detserve.errors.DetserveError`, which :func:`main` turns into a
message on stderr (or a JSON object on stdout with ``--json``) and the error's exit code.
"""

from detserve.cli.app import app, main

__all__ = ["app", "main"]
