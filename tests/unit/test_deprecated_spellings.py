"""No message names a deprecated option spelling.

The old ``--output``/``-o`` of ``sample``, ``eval-determinism``, ``hash`` and the locks is kept,
hidden, for old scripts (:func:`detserve.cli.options.legacy_output_option`); a hint that tells
a user what to run names the option as it is spelled now. Every string in ``src/detserve`` is
read with ``ast`` (f-strings' literal parts included) and each ``detserve ...`` command it
shows in backquotes is checked.
"""

from __future__ import annotations

import ast
import re

from .committed import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "src" / "detserve"
#: commands whose ``--output`` is their own current option, not a deprecated spelling
OUTPUT_IS_CURRENT = frozenset({"init"})
DEPRECATED = re.compile(r"(?<![\w-])(--output|-o)(?![\w-])")


def _shown_commands() -> list[tuple[str, str]]:
    shown = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for span in re.findall(r"`detserve ([^`]*)`", node.value):
                    shown.append((str(path.relative_to(PACKAGE_DIR)), " ".join(span.split())))
    return shown


def test_messages_show_detserve_commands() -> None:
    # a sanity check of the scan: were it to find nothing, the test below would pass vacuously
    assert any(span.startswith("hash ") for _, span in _shown_commands())


def test_no_message_names_a_deprecated_option_spelling() -> None:
    deprecated = sorted(
        f"{where}: `detserve {span}`"
        for where, span in _shown_commands()
        if span.split()[0] not in OUTPUT_IS_CURRENT and DEPRECATED.search(span)
    )
    assert deprecated == [], f"name the option as it is spelled now: {deprecated}"
