"""What every evaluation report shares: its format name and version, and how it names a log.

Each report (:class:`~detserve.evaluation.pair.DeterminismReport`,
:class:`~detserve.evaluation.expected_hash.HashCheckReport`,
:class:`~detserve.evaluation.majority.MajorityReport`) writes ``report``, ``report_version`` and
``mode`` first in its ``as_json``; a log appears in a report only once it was read to its end and
found valid (a :class:`~detserve.runlog.RunLogSummary`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from detserve.runlog import RunLogSummary

REPORT_FORMAT: Final = "detserve-eval-determinism"
REPORT_VERSION: Final = 1


@dataclass(frozen=True)
class LogRef:
    """A validated log, as a report names it."""

    path: Path
    sha256: str
    n_samples: int

    @classmethod
    def of(cls, summary: RunLogSummary) -> LogRef:
        return cls(summary.path, summary.sha256, summary.n_samples)

    def as_json(self) -> dict[str, object]:
        return {"path": str(self.path), "sha256": self.sha256, "n_samples": self.n_samples}

    def __str__(self) -> str:
        return f"{self.path} ({self.n_samples} samples, sha256 {self.sha256})"
