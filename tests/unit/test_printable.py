"""The one escaping rule for text printed to a terminal, and the output paths no command's
scenario reaches: progress descriptions, library log records and warnings.

What each command prints is checked with hostile input in ``test_escaped_output.py`` and
``test_escaped_output_engine.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata

import pytest
from rich.progress import TextColumn

from detserve.canonical import canonical_json
from detserve.cli.output import byte_progress, count_progress
from detserve.errors import DetserveError
from detserve.printable import printable, printable_json, printable_lines

from .hostile_text import HOSTILE, escaped, raw_characters


@pytest.mark.parametrize(
    ("char", "shown"),
    [
        ("\x1b", "\\x1b"),  # ESC: every CSI and OSC sequence starts here
        ("\x07", "\\x07"),  # BEL ends an OSC
        ("\x00", "\\x00"),
        ("\t", "\\t"),
        ("\n", "\\n"),
        ("\r", "\\r"),
        ("\x7f", "\\x7f"),  # DEL
        ("\x9b", "\\x9b"),  # C1 CSI
        ("\x85", "\\x85"),  # C1 next line
        ("\u00ad", "\\xad"),  # soft hyphen: invisible
        ("\u061c", "\\u061c"),  # Arabic letter mark
        ("\u200b", "\\u200b"),  # zero-width space
        ("\u200e", "\\u200e"),  # left-to-right mark
        ("\u202a", "\\u202a"),  # bidi embedding ...
        ("\u202e", "\\u202e"),  # ... and override
        ("\u2066", "\\u2066"),  # bidi isolates
        ("\u2069", "\\u2069"),
        ("\u2028", "\\u2028"),  # line separator
        ("\u2029", "\\u2029"),  # paragraph separator
        ("\u00a0", "\\xa0"),  # no-break space: reads as a space
        ("\ufeff", "\\ufeff"),  # byte order mark
        ("\udcff", "\\udcff"),  # a lone surrogate: a file name that is not UTF-8
        ("\U000e0041", "\\U000e0041"),  # a tag character: invisible
        ("\U0010fffd", "\\U0010fffd"),  # private use
    ],
)
def test_every_character_a_terminal_acts_on_is_shown_as_python_writes_it(
    char: str, shown: str
) -> None:
    assert printable(f"a{char}b") == f"a{shown}b"
    assert printable(char) == repr(char)[1:-1]  # the spelling of repr, read the same way


def test_printable_text_is_unchanged_and_escaping_twice_changes_nothing() -> None:
    text = "détserve ∑ 模型 🙂 [bold]x[/] :smile: a\\x1b"
    assert printable(text) == text
    assert printable(printable(HOSTILE)) == printable(HOSTILE)
    assert raw_characters(printable(HOSTILE)) == []
    assert "\n" not in printable(HOSTILE)


def test_no_character_that_is_not_printable_passes() -> None:
    # Every code point, by its Unicode category: only letters, marks, numbers, punctuation,
    # symbols and the ASCII space pass as they are.
    passing = {"L", "M", "N", "P", "S"}
    for code in range(0x110000):
        char = chr(code)
        category = unicodedata.category(char)
        if printable(char) == char:
            assert category[0] in passing or char == " ", f"U+{code:04X} {category}"


def test_lines_keep_their_newlines_and_nothing_else() -> None:
    assert printable_lines("a\x1b[2J\nb\r") == "a\\x1b[2J\nb\\r"


def test_json_escapes_the_same_characters_and_reads_the_same_value() -> None:
    document = {"name": HOSTILE, "emoji": "🙂", "plain": "x"}
    text = printable_json(canonical_json(document))
    assert raw_characters(text) == []
    assert "\n" not in text
    assert json.loads(text) == document
    plain = canonical_json({"a": "détserve 🙂"})
    assert printable_json(plain) == plain  # byte for byte when nothing needs escaping
    assert json.loads(printable_json(canonical_json({"t": "\U000e0041"}))) == {"t": "\U000e0041"}


def test_an_error_shows_every_field_escaped_on_one_line() -> None:
    error = DetserveError(f"message {HOSTILE}", details=[HOSTILE], hint=HOSTILE)
    lines = error.diagnostics().split("\n")
    assert lines == [
        f"message {escaped(HOSTILE)}",
        f"  {escaped(HOSTILE)}",
        f"hint: {escaped(HOSTILE)}",
    ]


def test_progress_descriptions_are_escaped_and_not_markup() -> None:
    with count_progress(HOSTILE, 3) as (progress, _task):
        assert progress.tasks[0].description == escaped(HOSTILE)
        columns = [c for c in progress.columns if isinstance(c, TextColumn)]
        shown = "".join(c.render(progress.tasks[0]).plain for c in columns)
        assert escaped(HOSTILE) in shown  # "[bold]" kept: not read as markup
    with byte_progress(HOSTILE) as bar:
        assert bar._progress.tasks[0].description == escaped(HOSTILE)


# A library logs (uvicorn logs an exception raised while handling a request, with its text) and
# warns, quoting what it received, while a command runs; the interpreter prints both on stderr.
_LIBRARY_OUTPUT = """
import logging, sys, warnings
from detserve import api
from detserve.cli import main

def verify(*args, **kwargs):
    hostile = sys.argv[1]
    logging.getLogger("some.library").warning("received %s", hostile)
    try:
        raise ValueError(hostile)
    except ValueError:
        logging.getLogger("some.library").exception("failed")
    warnings.warn(hostile, stacklevel=1)
    raise SystemExit(0)

api.verify = verify
main(["verify", "--snapshot", "."])
"""


def test_library_log_records_and_warnings_are_shown_escaped() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LIBRARY_OUTPUT, HOSTILE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert raw_characters(done.stderr) == [], done.stderr
    assert f"received {escaped(HOSTILE)}" in done.stderr
    # A traceback keeps its lines, the exception's text among them; each line is escaped.
    assert f"ValueError: {escaped(HOSTILE.split(chr(10))[0])}" in done.stderr
    assert f"UserWarning: {escaped(HOSTILE)}" in done.stderr
