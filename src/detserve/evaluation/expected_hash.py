"""Is this run log the one whose sha256 was published?

Invariant: the log is validated completely before its hash is compared, so a log whose bytes
match but which is invalid is still refused as invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detserve.errors import UsageError, VerificationError
from detserve.evaluation.report import REPORT_FORMAT, REPORT_VERSION, LogRef
from detserve.runlog import validate_run_log


def normalise_sha256(value: str) -> str:
    """A 64-hex sha256 in lower case (an optional ``sha256:`` prefix is dropped)."""
    digest = value.strip().lower().removeprefix("sha256:")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise UsageError(f"expected a sha256 (64 hex digits), found {value!r}")
    return digest


@dataclass(frozen=True)
class HashCheckReport:
    """A log checked against the sha256 published for it."""

    log: LogRef
    expected_sha256: str

    @property
    def ok(self) -> bool:
        return self.log.sha256 == self.expected_sha256

    @property
    def verdict(self) -> str:
        return "match" if self.ok else "mismatch"

    def summary_lines(self) -> list[str]:
        if self.ok:
            return [
                f"MATCH: {self.log.path} ({self.log.n_samples} samples) has the expected sha256 "
                f"{self.expected_sha256}"
            ]
        return [
            f"MISMATCH: {self.log.path} ({self.log.n_samples} samples)",
            f"  expected sha256 {self.expected_sha256}",
            f"  actual sha256   {self.log.sha256}",
        ]

    def error(self) -> VerificationError | None:
        if self.ok:
            return None
        return VerificationError(
            f"{self.log.path} is not the expected run log",
            details=[
                f"expected sha256 {self.expected_sha256}",
                f"actual sha256   {self.log.sha256}",
            ],
            hint="compare it with the published log itself (--run-a, --run-b) to see where",
        )

    def as_json(self) -> dict[str, object]:
        return {
            "report": REPORT_FORMAT,
            "report_version": REPORT_VERSION,
            "mode": "expected-hash",
            "ok": self.ok,
            "verdict": self.verdict,
            "run": self.log.as_json(),
            "expected_sha256": self.expected_sha256,
        }


def check_expected_hash(log: Path, expected_sha256: str) -> HashCheckReport:
    """Validate ``log`` completely and compare its sha256 with ``expected_sha256``."""
    expected = normalise_sha256(expected_sha256)
    return HashCheckReport(LogRef.of(validate_run_log(Path(log))), expected)
