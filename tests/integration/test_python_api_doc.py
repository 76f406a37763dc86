"""docs/python-api.md's tutorial, run block after block against the real CPU container.

The blocks run in one namespace, in order, as a reader would paste them; the setup block (which
names the reader's own profile and output folder) is replaced by a pinned tiny-cpu profile of
this session and a fresh folder. A block that fails fails the test with its number and text.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, DetserveRunner, ProfileFactory

pytestmark = pytest.mark.integration

DOC = REPO_ROOT / "docs" / "python-api.md"
SETUP_MARKER = "<!-- setup:"
BLOCK = re.compile(r"(?P<marker><!-- setup:[^\n]*-->\n)?```python\n(?P<code>.*?)```", re.S)


def tutorial_blocks() -> list[str]:
    text = DOC.read_text(encoding="utf-8").split("## Reference", 1)[0]
    return [m["code"] for m in BLOCK.finditer(text) if not m["marker"]]


def test_the_setup_block_is_the_one_skipped() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert text.count(SETUP_MARKER) == 1
    assert len(tutorial_blocks()) >= 8


def test_the_tutorial_runs_against_the_real_container(
    profile_factory: ProfileFactory, detserve: DetserveRunner, tmp_path: Path
) -> None:
    profile = profile_factory("python-api")
    work = tmp_path / "work"
    work.mkdir()
    namespace: dict[str, object] = {"PROFILE": profile, "WORK": work, "__name__": "tutorial"}
    try:
        for number, code in enumerate(tutorial_blocks(), start=1):
            try:
                exec(compile(code, f"docs/python-api.md block {number}", "exec"), namespace)
            except Exception as exc:  # noqa: BLE001 - whatever a block raises fails the test
                pytest.fail(f"tutorial block {number} failed: {exc!r}\n{code}")
    finally:
        with contextlib.suppress(Exception):
            detserve("stop", "--config", profile)
