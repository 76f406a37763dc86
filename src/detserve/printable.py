"""Text received from outside, made safe to show on a terminal: control characters are shown,
never executed.

A run log's model name, a container's log line, an envelope's key id, a server's error message
or a file name can hold characters a terminal acts on instead of showing: ESC, CSI and OSC
sequences that clear the screen, move the cursor or retitle the window; a carriage return that
overwrites the line already printed; C1 controls (U+009B is a CSI by itself); bidi overrides and
isolates that reorder what is shown; line and paragraph separators; zero-width and other format
characters that hide text. Printed raw, a received log could draw a fake ``VERIFIED`` line.

:func:`printable` is the one function through which such text reaches a person (the CLI's
output functions and every error message use it); :func:`printable_json` applies the same rule
to a JSON document, in JSON's own escapes.

Invariants:

* What :func:`printable` returns holds only characters :meth:`str.isprintable` accepts: no
  character of Unicode category C (controls, format characters such as the bidi controls,
  surrogates, private use, unassigned) and no separator (Zl, Zp, Zs) but the ASCII space. Every
  other character is shown as Python writes it in a string literal (``\\x1b``, ``\\u202e``,
  ``\\U000e0041``; ``\\t``, ``\\n``, ``\\r``): the same rule and spelling as :func:`repr`, so a
  value shown in a ``repr`` and one shown bare read alike.
* It is one line: a newline inside a value is shown as ``\\n``.
* It is idempotent: ``printable(printable(t)) == printable(t)``. The backslash itself is left as
  it is, so a text escaped where it was received (an error's message) and again where it is
  printed reads the same. The price: a received literal ``\\x1b`` (four characters) reads like an
  escaped ESC. Neither acts on the terminal, and ``--json`` gives the exact value.
* Rich markup (``[bold]``) and emoji codes (``:smile:``) are ordinary printable text here; the
  consoles that print it interpret neither (:mod:`detserve.cli.output`).
"""

from __future__ import annotations

__all__ = ["printable", "printable_json", "printable_lines"]

#: the escapes Python's ``repr`` uses for these three controls
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` as one line a terminal shows as it is: every character that is not printable
    (controls, format characters, separators but the space, surrogates) shown as its escape."""
    if text.isprintable():  # the common case, decided in C
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def printable_lines(text: str) -> str:
    """A text of several lines (an error's diagnostics, a traceback): each line
    :func:`printable`, the newlines between them kept."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # a surrogate pair, as JSON spells a character beyond the BMP
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def printable_json(document: str) -> str:
    """A JSON text as :func:`printable` shows text, in JSON's own escapes: the same value for a
    parser, nothing a terminal acts on.

    JSON encoders escape C0 controls but write DEL, C1 controls, the bidi controls and U+2028 as
    they are; each is written ``\\uXXXX`` here. Outside its strings a JSON text is printable ASCII
    and newlines (an indented document), so only characters inside strings change, and only
    these: for any other document the text is returned unchanged, byte for byte.
    """
    if document.isprintable():
        return document
    return "".join(
        char if char.isprintable() or char == "\n" else _json_escape(char) for char in document
    )
