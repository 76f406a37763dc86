"""Given one run log per node, which agree with the majority?

Invariants: every log is validated completely; logs are grouped by sha256; a majority is a group
holding more than half of the logs (a tie is no majority); only a unanimous set is ok; each log
that disagrees with a majority is compared with a log of it, to say where.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from detserve.errors import Divergence, UsageError, VerificationError
from detserve.evaluation.pair import DeterminismReport, evaluate, refuse_same_file
from detserve.evaluation.report import REPORT_FORMAT, REPORT_VERSION, LogRef
from detserve.runlog import validate_run_log


@dataclass(frozen=True)
class HashGroup:
    sha256: str
    paths: tuple[Path, ...]

    def as_json(self) -> dict[str, object]:
        return {"sha256": self.sha256, "runs": [str(p) for p in self.paths]}


@dataclass(frozen=True)
class MajorityReport:
    """Several logs of one claim (one per node), grouped by sha256."""

    logs: tuple[LogRef, ...]
    groups: tuple[HashGroup, ...]
    """Largest group first; ties by sha256."""
    majority: HashGroup | None
    """The group holding more than half of the logs, if one does."""
    comparisons: tuple[DeterminismReport, ...] = field(default=())
    """Each dissenting log compared with a log of the majority."""

    @property
    def verdict(self) -> str:
        if len(self.groups) == 1:
            return "unanimous"
        return "majority" if self.majority else "no-majority"

    @property
    def ok(self) -> bool:
        return self.verdict == "unanimous"

    @property
    def dissenters(self) -> tuple[Path, ...]:
        if self.majority is None:
            return ()
        return tuple(log.path for log in self.logs if log.sha256 != self.majority.sha256)

    def summary_lines(self) -> list[str]:
        n = len(self.logs)
        if self.verdict == "unanimous":
            return [f"UNANIMOUS: all {n} run logs are identical (sha256 {self.groups[0].sha256})"]
        lines = []
        if self.majority is not None:
            lines.append(
                f"MAJORITY: {len(self.majority.paths)} of {n} run logs agree (sha256 "
                f"{self.majority.sha256}); {len(self.dissenters)} do not"
            )
        else:
            lines.append(
                f"NO MAJORITY: {n} run logs fall into {len(self.groups)} groups, none larger "
                "than half"
            )
        for group in self.groups:
            marker = "majority" if group == self.majority else "group"
            lines.append(f"  {marker} {group.sha256}: {', '.join(str(p) for p in group.paths)}")
        for comparison in self.comparisons:
            lines.append(f"{comparison.run_b.path} against {comparison.run_a.path}:")
            lines.extend(f"  {line}" for line in comparison.summary_lines()[2:])
        return lines

    def error(self) -> VerificationError | None:
        if self.ok:
            return None
        if self.majority is None:
            return Divergence(
                f"no majority among {len(self.logs)} run logs",
                details=[f"{g.sha256}: {len(g.paths)} log(s)" for g in self.groups],
            )
        return Divergence(
            f"{len(self.dissenters)} of {len(self.logs)} run logs disagree with the majority",
            details=[str(path) for path in self.dissenters],
        )

    def as_json(self) -> dict[str, object]:
        return {
            "report": REPORT_FORMAT,
            "report_version": REPORT_VERSION,
            "mode": "majority",
            "ok": self.ok,
            "verdict": self.verdict,
            "runs": [log.as_json() for log in self.logs],
            "groups": [g.as_json() for g in self.groups],
            "majority_sha256": self.majority.sha256 if self.majority else None,
            "agree": [
                str(log.path)
                for log in self.logs
                if self.majority and log.sha256 == self.majority.sha256
            ],
            "disagree": [str(p) for p in self.dissenters],
            "comparisons": [c.as_json() for c in self.comparisons],
        }


def compare_many(
    runs: Sequence[Path],
    *,
    max_reported: int = 5,
    progress: Callable[[Path], None] | None = None,
) -> MajorityReport:
    """Validate every log, group them by sha256, and find the majority (more than half).

    Each log that disagrees with a majority is compared with a log of it, to say where.
    """
    paths = [Path(p) for p in runs]
    if len(paths) < 2:
        raise UsageError("give at least two run logs (--run PATH, repeated); three to outvote one")
    refuse_same_file(paths)
    logs = []
    for path in paths:
        if progress is not None:
            progress(path)
        logs.append(LogRef.of(validate_run_log(path)))
    by_hash: dict[str, list[Path]] = {}
    for log in logs:
        by_hash.setdefault(log.sha256, []).append(log.path)
    groups = tuple(
        HashGroup(sha, tuple(members))
        for sha, members in sorted(by_hash.items(), key=lambda item: (-len(item[1]), item[0]))
    )
    majority = groups[0] if len(groups[0].paths) * 2 > len(logs) else None
    comparisons: list[DeterminismReport] = []
    if majority is not None:
        reference = majority.paths[0]
        for log in logs:
            if log.sha256 != majority.sha256:
                comparisons.append(evaluate(reference, log.path, max_reported=max_reported))
    return MajorityReport(tuple(logs), groups, majority, tuple(comparisons))
