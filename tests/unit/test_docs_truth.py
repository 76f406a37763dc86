"""Sentences in the docs that state a fact of the code, checked against the code.

The run-log format version a detserve reads is stated in several pages (versions, failure cases,
the specification); each statement must name :data:`~detserve.runlog.models.FORMAT_VERSION`, so
a format bump that forgets a page fails here. The seed's vocabulary (``workflow.sh`` and its
steps, ``generate_tokens.sh``, ``eval-determinism``) has a row each in the table of
docs/seed-workflow.md, since operators arrive with those names.
"""

from __future__ import annotations

import re

import pytest

from detserve.runlog.models import FORMAT_VERSION

from .committed import REPO_ROOT

#: the ways a page says which run-log version this detserve reads
READS = re.compile(
    r"which reads (?P<a>\d+)|reads version (?P<b>\d+) only|reads version (?P<c>\d+)\b"
    r"|`format_version` is not `(?P<d>\d+)`"
)
SEED_COMMANDS = (
    "workflow.sh run",
    "workflow.sh start",
    "workflow.sh wait",
    "workflow.sh smoke",
    "workflow.sh hash",
    "workflow.sh verify",
    "workflow.sh stop",
    "workflow.sh lock-model",
    "workflow.sh lock-image",
    "generate_tokens.sh",
    "workflow.sh eval-determinism",
)


def _pages() -> list[str]:
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    return [str(page.relative_to(REPO_ROOT)) for page in pages]


def _statements() -> list[tuple[str, int]]:
    found = []
    for page in _pages():
        text = " ".join((REPO_ROOT / page).read_text(encoding="utf-8").split())
        for match in READS.finditer(text):
            version = next(value for value in match.groupdict().values() if value is not None)
            found.append((page, int(version)))
    return found


def test_the_pages_state_which_version_is_read() -> None:
    # a sanity check of the scan: the versions page and the specification say it
    pages = {page for page, _ in _statements()}
    assert {"docs/versions.md", "docs/spec/run-log.md"} <= pages


def test_every_statement_names_the_version_read() -> None:
    stale = [(page, version) for page, version in _statements() if version != FORMAT_VERSION]
    assert stale == [], f"this detserve reads run-log format {FORMAT_VERSION}: {stale}"


@pytest.mark.parametrize("command", SEED_COMMANDS)
def test_the_seed_table_maps_each_seed_command(command: str) -> None:
    table = (REPO_ROOT / "docs" / "seed-workflow.md").read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    mapped = [row for row in rows if re.match(rf"\| `{re.escape(command)}[ `]", row)]
    assert mapped, f"{command}: no row in docs/seed-workflow.md"
    for row in mapped:
        assert "`detserve " in row.split(" | ")[1], row
