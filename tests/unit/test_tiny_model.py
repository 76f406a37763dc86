"""The committed tiny model is exactly what scripts/make_tiny_model.py builds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .committed import REPO_ROOT, TINY_MODEL_DIR, TINY_MODEL_FOLDER, TINY_REVISION

SCRIPT = REPO_ROOT / "scripts" / "make_tiny_model.py"


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_committed_model_is_reproducible() -> None:
    checked = run_script("--check")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == TINY_REVISION


def test_check_names_a_changed_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "hub" / TINY_MODEL_FOLDER
    shutil.copytree(TINY_MODEL_DIR, model_dir, symlinks=True)
    blob = (model_dir / "snapshots" / TINY_REVISION / "config.json").resolve()
    blob.write_bytes(blob.read_bytes() + b" ")
    checked = run_script("--check", "--output-root", tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"changed: blobs/{blob.name}: expected file" in checked.stderr
    assert checked.stdout == ""


def test_check_never_writes(tmp_path: Path) -> None:
    checked = run_script("--check", "--output-root", tmp_path)
    assert checked.returncode == 1
    assert "does not exist; build it first" in checked.stderr
    assert list(tmp_path.iterdir()) == []
