"""Text a forger puts in what detserve receives, and the check that none of it reaches a terminal.

:data:`HOSTILE` holds one of each thing a terminal acts on instead of showing; a command that
prints a received value raw lets it clear the screen, retitle the window, overwrite the line it
printed, reverse text, or draw a ``VERIFIED`` line of its own. :func:`assert_shown_escaped`
requires that no character a terminal acts on reaches stdout or stderr, and that the value is
there, escaped, for a person to read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detserve.printable import printable

from .committed import CliResult

#: One of each: an escape sequence, an OSC, cursor movement, a carriage return, a C1 control, the
#: bidi controls, a line separator, DEL and backspace, rich markup, an emoji code and a newline.
HOSTILE = (
    "\x1b[2J"  # CSI: clear the screen
    "\x1b]0;owned\x07"  # OSC: retitle the window, ended by BEL
    "\x1b[1A\x1b[2K"  # CSI: cursor up a line, erase it
    "\r"  # carriage return: overwrite what the line shows
    "\x9b1;32m"  # C1 CSI (U+009B): green, on terminals that take 8-bit controls
    "\u202eDEIFIREV\u202c"  # bidi override: shown reversed, as VERIFIED
    "\u2067x\u2069"  # bidi isolate
    "\u2028\x7f\x08"  # line separator, DEL, backspace
    "[bold]VERIFIED[/bold] :white_check_mark:"  # rich markup and an emoji code
    "\nVERIFIED: forged"  # a line of its own
)
#: the same as a file name (no slash)
HOSTILE_NAME = HOSTILE.replace("/", "%")


def escaped(text: str) -> str:
    """How ``text`` must read on a terminal: every control shown as its escape."""
    return printable(text)


def raw_characters(text: str) -> list[str]:
    """The characters of ``text`` a terminal would act on (a newline ends a line: not one)."""
    return sorted(
        {f"U+{ord(char):04X}" for char in text if not char.isprintable() and char != "\n"}
    )


def _strings(document: Any) -> Iterator[str]:
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for key, value in document.items():
            yield key
            yield from _strings(value)
    elif isinstance(document, list):
        for item in document:
            yield from _strings(item)


def assert_shown_escaped(ran: CliResult, value: str, *, json_output: bool = False) -> None:
    """Nothing a terminal acts on in ``ran``'s output, and ``value`` shown in it, escaped.

    With ``--json``, stdout is JSON: the value is in one of its strings, exactly (a result) or
    escaped (an error's message, escaped where it was made).
    """
    for stream, text in (("stdout", ran.out), ("stderr", ran.err)):
        assert raw_characters(text) == [], f"raw on {stream}: {raw_characters(text)}\n{text!r}"
    if json_output:
        lines = [line for line in ran.out.splitlines() if line.strip()]
        assert lines, f"no JSON on stdout\n{ran.text!r}"
        found = [s for line in lines for s in _strings(json.loads(line))]
        assert any(value in s or escaped(value) in s for s in found), f"{value!r} not in {found}"
    else:
        assert escaped(value) in ran.text, f"{escaped(value)!r} not shown in\n{ran.text}"


@dataclass(frozen=True)
class Scenario:
    """A command fed hostile text where it reads it, and the hostile value it must show."""

    #: the command as a person types it: "runlog show", "verify"
    command: str
    #: what the hostile text is fed through (the test's id)
    through: str
    #: (the test's world) -> the arguments after the command's name, without --json
    arguments: Callable[[Any], list[str | Path]]
    #: the value that must be shown, escaped
    shown: str = HOSTILE
    #: the exit status expected (the output matters here, not the verdict, but a command that
    #: fails for another reason than the one set up proves nothing)
    codes: frozenset[int] = field(default_factory=lambda: frozenset({0}))

    @property
    def id(self) -> str:
        return f"{self.command}:{self.through}"
