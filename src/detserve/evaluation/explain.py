"""Why do nodes disagree? A report's verdict with each dissenting node's environment beside it.

``eval-determinism --sidecar`` gives one sidecar per run log, in the order of the logs:
``--run-a`` then ``--run-b``; each ``--run``; ``--run-a`` then the published log's for
``--expected-hash``. For every log that disagrees (with run A, with the
majority, with the published hash), :func:`explain` names its first divergence and every
difference of its environment fingerprint from the reference's, ranked by root-cause category
(:mod:`detserve.root_causes`).

Invariants: a fingerprint is believed only bound to the log it explains: the sidecar holding it
must name that log's sha256 (a sidecar of another run would explain the wrong node, and a bare
``detserve env`` fingerprint names no run at all: both bad input, exit 2); a sidecar without a
fingerprint is bad input, never an empty difference; the verdict is the wrapped report's, and
nothing here changes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from detserve.errors import InputError, UsageError, VerificationError
from detserve.evaluation.expected_hash import HashCheckReport
from detserve.evaluation.majority import MajorityReport
from detserve.evaluation.pair import DeterminismReport
from detserve.fileio import read_input
from detserve.fingerprint import FORMAT, EnvironmentFingerprint, parse_fingerprint
from detserve.root_causes import Difference, fingerprint_differences, header_differences
from detserve.strict_json import read_json_object

#: the largest sidecar read
MAX_SIDECAR_BYTES: Final = 4 * 1024 * 1024

Report = DeterminismReport | HashCheckReport | MajorityReport


@dataclass(frozen=True)
class NodeEnvironment:
    """The fingerprint a sidecar records, and the run log it is bound to."""

    source: Path
    fingerprint: EnvironmentFingerprint
    #: the sha256 of the run log the sidecar was written with, which it names
    run_log_sha256: str


def read_node_environment(path: Path, *, run_log_sha256: str, log: str) -> NodeEnvironment:
    """The fingerprint of the sidecar at ``path``, believed only when the sidecar names
    ``run_log_sha256``, the sha256 of the run log it explains (``log`` names that log in errors).

    Anything else is :class:`InputError` (exit 2): a sidecar of another run log, one naming no
    run log, a bare ``detserve env`` fingerprint (bound to no run), one without a fingerprint.
    """
    data = read_input(Path(path), what="sidecar", cap=MAX_SIDECAR_BYTES)
    # strictly: a loose read takes the last of two values of a key (a reviewer reads the first)
    document = read_json_object(data, str(path))
    if document.get("format") == FORMAT:
        raise InputError(
            f"{path}: an environment fingerprint bound to no run log: it names no run log's "
            f"sha256, so nothing says it describes where {log} was sampled",
            hint="give the run's sidecar (`sample --sidecar-output`), which names its run log",
        )
    if "environment" not in document:
        raise InputError(
            f"{path}: the sidecar records no environment fingerprint",
            hint="a sidecar without one (sampled through the library with another engine) "
            "cannot explain its run",
        )
    named = document.get("run_log_sha256")
    if not isinstance(named, str):
        raise InputError(f"{path}: the sidecar names no run_log_sha256: it is bound to no run")
    if named != run_log_sha256:
        raise InputError(
            f"{path} is the sidecar of another run log than {log}",
            details=[f"sidecar's run log sha256 {named}", f"log's {run_log_sha256}"],
        )
    fingerprint = parse_fingerprint(document["environment"], source=f"{path}: environment")
    return NodeEnvironment(path, fingerprint, named)


@dataclass(frozen=True)
class NodeExplanation:
    """One disagreeing log: where it parts from its reference, and how their environments do."""

    run: Path
    reference: Path
    first_divergence: str
    differences: tuple[Difference, ...]

    def lines(self) -> list[str]:
        lines = [
            f"{self.run} against {self.reference}:",
            f"  first divergence: {self.first_divergence}",
        ]
        if not self.differences:
            lines.append("  environment: no difference in the fingerprints (same host and image)")
        else:
            lines.append("  environment differences, most likely cause first:")
            lines.extend(f"    {difference}" for difference in self.differences)
        return lines

    def as_json(self) -> dict[str, object]:
        return {
            "run": str(self.run),
            "reference": str(self.reference),
            "first_divergence": self.first_divergence,
            "environment_differences": [d.as_json() for d in self.differences],
        }


@dataclass(frozen=True)
class ExplainedReport:
    """A comparison's report and, for each log that disagrees, its explanation."""

    report: Report
    sidecars: tuple[NodeEnvironment, ...]
    explanations: tuple[NodeExplanation, ...]

    @property
    def ok(self) -> bool:
        return self.report.ok

    def summary_lines(self) -> list[str]:
        lines = list(self.report.summary_lines())
        for explanation in self.explanations:
            lines.extend(explanation.lines())
        return lines

    def error(self) -> VerificationError | None:
        return self.report.error()

    def as_json(self) -> dict[str, object]:
        return self.report.as_json() | {
            "sidecars": [str(node.source) for node in self.sidecars],
            "explanations": [e.as_json() for e in self.explanations],
        }


def _first_divergence(comparison: DeterminismReport) -> str:
    if comparison.header_differences:
        pairs = [(d.field, d.run_a, d.run_b) for d in comparison.header_differences]
        ranked = header_differences(pairs)
        return f"not a replay: {ranked[0]}" + (
            f" (and {len(ranked) - 1} more header fields)" if len(ranked) > 1 else ""
        )
    divergence = comparison.first_divergence
    if divergence is not None:
        return str(divergence)
    if comparison.prompt_mismatches:
        return f"different prompts: {comparison.prompt_mismatches[0]}"
    if comparison.unpaired_samples:
        return f"{comparison.unpaired_samples} samples are in one log only"
    return comparison.verdict.value


def _logs(report: Report) -> list[tuple[Path | None, str]]:
    """(path, sha256) of each log in the order its sidecar is given."""
    if isinstance(report, DeterminismReport):
        return [(report.run_a.path, report.run_a.sha256), (report.run_b.path, report.run_b.sha256)]
    if isinstance(report, HashCheckReport):
        return [(report.log.path, report.log.sha256), (None, report.expected_sha256)]
    return [(log.path, log.sha256) for log in report.logs]


def report_logs(report: Report) -> list[Path]:
    """The run logs a report was made from (its inputs, never to be written over)."""
    return [path for path, _ in _logs(report) if path is not None]


def _pair(report: Report, sidecars: Sequence[Path]) -> tuple[NodeEnvironment, ...]:
    logs = _logs(report)
    if len(sidecars) != len(logs):
        raise UsageError(
            f"give one --sidecar per run log, in their order: {len(logs)} expected, "
            f"{len(sidecars)} given",
            hint="--expected-hash takes two: --run-a's, then the published log's",
        )
    return tuple(
        read_node_environment(
            Path(sidecar),
            run_log_sha256=sha256,
            log=str(path) if path is not None else "the published log",
        )
        for (path, sha256), sidecar in zip(logs, sidecars, strict=True)
    )


def explain(report: Report, sidecars: Sequence[Path]) -> ExplainedReport:
    """``report`` with, for each disagreeing log, its first divergence and ranked environment
    differences from its reference's (run A, the majority's first log, the published log)."""
    nodes = _pair(report, sidecars)
    explanations: list[NodeExplanation] = []
    if isinstance(report, DeterminismReport):
        if not report.ok:
            explanations.append(
                NodeExplanation(
                    report.run_b.path,
                    report.run_a.path,
                    _first_divergence(report),
                    fingerprint_differences(nodes[0].fingerprint, nodes[1].fingerprint),
                )
            )
    elif isinstance(report, HashCheckReport):
        if not report.ok:
            explanations.append(
                NodeExplanation(
                    report.log.path,
                    nodes[1].source,
                    "another sha256 than the published one (compare it with the published log "
                    "itself, --run-a and --run-b, for the first divergent token)",
                    fingerprint_differences(nodes[1].fingerprint, nodes[0].fingerprint),
                )
            )
    else:
        explanations.extend(_majority_explanations(report, nodes))
    return ExplainedReport(report, nodes, tuple(explanations))


def _majority_explanations(
    report: MajorityReport, nodes: tuple[NodeEnvironment, ...]
) -> list[NodeExplanation]:
    # Without a majority, every other group is explained against the largest one's first log.
    reference_group = report.majority or report.groups[0]
    if len(report.groups) == 1:
        return []
    index = {log.path: i for i, log in enumerate(report.logs)}
    reference = reference_group.paths[0]
    comparisons = {c.run_b.path: c for c in report.comparisons}
    explanations = []
    for log in report.logs:
        if log.sha256 == reference_group.sha256:
            continue
        comparison = comparisons.get(log.path)
        first = (
            _first_divergence(comparison)
            if comparison is not None
            else f"sha256 {log.sha256}, not the largest group's {reference_group.sha256}"
        )
        explanations.append(
            NodeExplanation(
                log.path,
                reference,
                first,
                fingerprint_differences(
                    nodes[index[reference]].fingerprint, nodes[index[log.path]].fingerprint
                ),
            )
        )
    return explanations
