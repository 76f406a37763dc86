"""The independent checker (``scripts/spec_check.py``), written from docs/spec/run-log.md alone,
against the same vectors as detserve: both give every vector its manifest's verdict, so the two
agree, and the checker imports nothing but the standard library and ``rfc8785``.

Lines over the 8 MiB limit are generated here rather than committed.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .spec_vectors import MANIFEST, SCRIPTS, detserve_outcome, vectors

MAX_LINE_BYTES = 8 * 1024 * 1024
CHECKER_MODULES = sorted(SCRIPTS.glob("spec_check*.py"))

_RUN_VECTORS = """
import json, sys
from pathlib import Path
before = set(sys.modules)
sys.path.insert(0, sys.argv[1])
import spec_check
results = spec_check.run_vectors(Path(sys.argv[2]))
loaded = {name.split(".")[0] for name in set(sys.modules) - before}
print(json.dumps({"results": results, "modules": sorted(loaded)}))
"""


@pytest.fixture(scope="module")
def checked() -> dict[str, Any]:
    """The checker run over every vector, in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-c", _RUN_VECTORS, str(SCRIPTS), str(MANIFEST)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_checker_imports_only_the_standard_library_and_rfc8785(
    checked: dict[str, Any],
) -> None:
    own = {path.stem for path in CHECKER_MODULES}
    allowed = set(sys.stdlib_module_names) | {"rfc8785"} | own
    for path in CHECKER_MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
    # and at run time: what importing and running it loaded beyond the interpreter's start
    loaded = set(checked["modules"]) - set(sys.stdlib_module_names) - {"__main__"}
    assert loaded <= {"rfc8785"} | own, sorted(loaded)
    assert "detserve" not in loaded
    assert "pydantic" not in loaded


def test_the_checker_gives_every_vector_its_verdict(checked: dict[str, Any]) -> None:
    disagreements = [entry for entry in checked["results"] if not entry["agrees"]]
    assert not disagreements, json.dumps(disagreements, indent=1)[:4000]
    assert len(checked["results"]) == len(vectors())


def test_the_checker_and_detserve_agree_on_every_vector(checked: dict[str, Any]) -> None:
    by_name = {entry["name"]: entry["result"] for entry in checked["results"]}
    for vector in vectors():
        mine = detserve_outcome(vector)
        theirs = by_name[vector["name"]]
        assert (mine.verdict, mine.exit) == (theirs["verdict"], theirs["exit"]), vector["name"]
        assert mine.keyid == theirs["keyid"], vector["name"]


def _checker(*args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "spec_check.py"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


def test_the_checkers_exit_status_is_the_verdicts() -> None:
    root = MANIFEST.parent
    assert _checker("run-log", str(root / "run-log/valid-full.runlog.jsonl"))[0] == 0
    code, result = _checker("run-log", str(root / "run-log/crlf.runlog.jsonl"))
    assert (code, result["verdict"], result["rule"]) == (2, "invalid", "line.canonical")
    code, result = _checker("directory", str(root / "directory/previous-wrong"))
    assert (code, result["verdict"]) == (1, "chain-broken")
    claim = root / "claim"
    code, result = _checker(
        "claim",
        "--envelope", str(claim / "valid-ed25519.intoto.json"),
        "--public-key", str(claim / "keys/p256.pub"),
        "--run-log", str(claim / "run.runlog.jsonl"),
    )  # fmt: skip
    assert (code, result["verdict"]) == (1, "bad-signature")


# --- lines at the limit, generated --------------------------------------------------------------


def _builders() -> Any:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import spec_vectors_base
        import spec_vectors_transcripts
    finally:
        sys.path.remove(str(SCRIPTS))
    return spec_vectors_base, spec_vectors_transcripts


def _run_log_with_line(length: int) -> bytes:
    """A run log whose sample line is ``length`` bytes long, LF included."""
    base, _ = _builders()
    sample = base.bundle_sample(0)
    short = len(base.line({**sample, "text": ""}))
    euros, rest = divmod(length - short, 3)
    sample["text"] = "€" * euros + "a" * rest
    lines = base.run_log_lines(base.run_header(1), [sample])
    assert len(lines[1]) == length
    return b"".join(lines)


def _both(kind: str, path: Path, allow_cut: bool = False) -> list[tuple[str, int, str | None]]:
    """(verdict, exit) by detserve and by the checker, and the checker's rule."""
    files = {"log": path.name}
    vector = {"kind": kind, "files": files, "options": {"allow_cut": allow_cut}}
    mine = detserve_outcome(vector, root=path.parent)
    args = [kind, str(path), *(["--allow-cut"] if allow_cut else [])]
    _, theirs = _checker(*args)
    return [(mine.verdict, mine.exit, None), (theirs["verdict"], theirs["exit"], theirs["rule"])]


@pytest.mark.parametrize(
    ("length", "verdict"), [(MAX_LINE_BYTES, "valid"), (MAX_LINE_BYTES + 1, "invalid")]
)
def test_a_line_at_and_past_the_limit(tmp_path: Path, length: int, verdict: str) -> None:
    path = tmp_path / "long.runlog.jsonl"
    path.write_bytes(_run_log_with_line(length))
    (detserve, checker) = _both("run-log", path)
    rule = None if verdict == "valid" else "line.length"
    assert detserve[:2] == checker[:2] == (verdict, 0 if verdict == "valid" else 2)
    assert checker[2] == rule


@pytest.mark.parametrize(
    ("torn", "verdict"), [(MAX_LINE_BYTES, "cut"), (MAX_LINE_BYTES + 1, "invalid")]
)
def test_a_torn_line_at_and_past_the_limit(tmp_path: Path, torn: int, verdict: str) -> None:
    _, transcripts = _builders()
    lines = transcripts.valid_segment()[:-1]  # cut: no footer
    path = tmp_path / "torn.transcript.jsonl"
    path.write_bytes(b"".join(lines) + b'{"' + b"a" * (torn - 2))
    (detserve, checker) = _both("segment", path, allow_cut=True)
    assert detserve[:2] == checker[:2] == (verdict, 0 if verdict == "cut" else 2)
    assert checker[2] == (None if verdict == "cut" else "line.length")
