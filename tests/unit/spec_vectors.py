"""The run-log specification's test vectors (docs/spec/vectors/index.json), and detserve's verdict
on one of them, in the terms of the specification (docs/spec/run-log.md section 1.1)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detserve import api
from detserve.attestation import ClaimError, ClaimPinMismatch, SubjectMismatch, verify_claim
from detserve.envelope import SignatureError
from detserve.errors import ChainBroken, DetserveError, UsageError
from detserve.evaluation import DeterminismReport
from detserve.runlog import validate_run_log
from detserve.runlog.series import validate_transcript_dir
from detserve.runlog.transcript import validate_transcript

from .committed import REPO_ROOT

SPEC = REPO_ROOT / "docs" / "spec" / "run-log.md"
MANIFEST = REPO_ROOT / "docs" / "spec" / "vectors" / "index.json"
SCRIPTS = REPO_ROOT / "scripts"


def vectors() -> list[dict[str, Any]]:
    return list(json.loads(MANIFEST.read_text(encoding="utf-8"))["vectors"])


@dataclass(frozen=True)
class Outcome:
    """detserve's verdict on a vector: the verdict, the exit status, and what it said."""

    verdict: str
    exit: int
    message: str = ""
    keyid: str | None = None
    report: DeterminismReport | None = None


_VERDICTS: tuple[tuple[type[DetserveError], str], ...] = (
    (SignatureError, "bad-signature"),
    (ClaimError, "not-a-claim"),
    (SubjectMismatch, "subject-mismatch"),
    (ClaimPinMismatch, "pin-mismatch"),
    (ChainBroken, "chain-broken"),
    (UsageError, "usage"),
)


def detserve_outcome(vector: dict[str, Any], root: Path = MANIFEST.parent) -> Outcome:
    """Run detserve's own reader (or comparison, or claim verification) over one vector."""
    files = {role: root / path for role, path in vector["files"].items()}
    allow_cut = bool(vector["options"].get("allow_cut"))
    kind = vector["kind"]
    try:
        if kind == "run-log":
            validate_run_log(files["log"])
            return Outcome("valid", 0)
        if kind == "segment":
            summary = validate_transcript(files["log"], allow_cut=allow_cut)
            return Outcome("cut" if summary.cut else "valid", 0)
        if kind == "directory":
            series = validate_transcript_dir(files["directory"], allow_cut=allow_cut)
            return Outcome("cut" if any(one.cut for one in series) else "valid", 0)
        if kind == "pair":
            report = api.evaluate(files["run_a"], files["run_b"])
            return Outcome(str(report.verdict), 0 if report.ok else 1, report=report)
        if kind == "claim":
            claim = verify_claim(files["envelope"], files["public_key"], files["run_log"])
            return Outcome("verified", 0, keyid=claim.keyid)
    except DetserveError as exc:
        verdict = next((name for cls, name in _VERDICTS if isinstance(exc, cls)), None)
        if verdict is None:
            verdict = "invalid" if exc.exit_code == 2 else f"unexpected {exc.kind}"
        text = "\n".join([exc.message, *exc.details])
        return Outcome(verdict, exc.exit_code, text)
    raise AssertionError(f"unknown kind {kind!r}")
