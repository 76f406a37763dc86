"""Is run B a faithful replay of run A? Two logs read once, in lock-step, in bounded memory.

Identical bytes are identical; otherwise the headers are compared (different pins or sampling:
"not a replay", each differing field listed with both values), then the samples: for each
divergent sample the first divergent output token, ±8 tokens of both sides, the text around the
first differing character, both finish reasons and the logprob differences.

Invariants: both logs are validated completely before a verdict is given (an invalid log is a
:class:`~detserve.errors.RunLogError`, never a verdict); a log is never compared with itself;
every divergent sample is counted, the first ``max_reported`` described.

The pass over the records (:func:`count_samples`) and the verdict (:func:`judge`) are the only
ones: :mod:`~detserve.evaluation.transcript_pair` feeds gateway exchanges to them as samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import zip_longest
from pathlib import Path
from typing import Final, TypeVar

from detserve.errors import Divergence, PinMismatch, UsageError, VerificationError
from detserve.evaluation.compare import (
    FieldDifference,
    PromptMismatch,
    SampleDivergence,
    Thresholds,
    compare_samples,
    header_differences,
)
from detserve.evaluation.report import REPORT_FORMAT, REPORT_VERSION, LogRef
from detserve.runlog import RunLogReader, RunLogSample, require_same_bytes
from detserve.runlog.kinds import open_pair

#: divergent samples described in full by default; all are counted
DEFAULT_MAX_REPORTED: Final = 20
#: samples between two progress calls
PROGRESS_EVERY: Final = 4096

#: called with (samples compared so far, samples announced by run A's header)
EvalProgress = Callable[[int, int], None]

#: a record of a log as :func:`count_samples` pairs them: a run-log sample, a transcript exchange
Record = TypeVar("Record")


class Verdict(StrEnum):
    IDENTICAL = "identical"
    WITHIN_THRESHOLD = "within-threshold"
    #: gateway transcripts only: everything recorded repeats, but some exchanges hold only the
    #: start of their answer (a stream that ended early); ok, and never IDENTICAL
    INCOMPLETE = "incomplete"
    DIVERGENT = "divergent"
    NOT_A_REPLAY = "not-a-replay"
    #: gateway transcripts only: a segment was cut (no footer); what it holds repeats, but its
    #: whole is not anchored, so it is never ok
    CUT = "cut"


@dataclass(frozen=True)
class DeterminismReport:
    """The comparison of run B with run A."""

    run_a: LogRef
    run_b: LogRef
    thresholds: Thresholds
    verdict: Verdict
    header_differences: tuple[FieldDifference, ...]
    prompt_mismatches: tuple[PromptMismatch, ...]
    """The first ``max_reported`` of them."""
    prompt_mismatch_count: int
    samples_compared: int
    """Indices both logs have."""
    unpaired_samples: int
    """Samples only the longer log has."""
    identical_samples: int
    tolerated_samples: int
    divergent_samples: int
    divergences: tuple[SampleDivergence, ...]
    """The first ``max_reported`` divergent (not tolerated) samples."""
    incomplete_samples: int = 0
    """Gateway exchanges compared that hold only the start of their answer."""
    cut_after: int | None = None
    """When run A (or B) is a cut transcript segment: the exchanges it holds before the cut."""

    @property
    def ok(self) -> bool:
        return self.verdict in (Verdict.IDENTICAL, Verdict.WITHIN_THRESHOLD, Verdict.INCOMPLETE)

    @property
    def exact_match_ratio(self) -> float:
        total = self.samples_compared + self.unpaired_samples
        return (self.identical_samples + self.tolerated_samples) / total if total else 0.0

    @property
    def first_divergence(self) -> SampleDivergence | None:
        return self.divergences[0] if self.divergences else None

    def summary_lines(self) -> list[str]:
        """A human text, one finding a line, most important first."""
        lines = [
            f"run A: {self.run_a}",
            f"run B: {self.run_b}",
        ]
        if self.verdict is Verdict.IDENTICAL:
            lines.append(
                f"IDENTICAL: the two run logs are byte-identical ({self.run_a.n_samples} samples)"
            )
            return lines
        if self.verdict is Verdict.INCOMPLETE:
            lines.append(
                f"INCOMPLETE: every recorded token repeats ({self.run_a.n_samples} exchanges), "
                f"but {self.incomplete_samples} of them hold only the start of their answer (a "
                "stream that ended early): that start is what the server generates; what would "
                "have followed was never recorded, so it is not verified"
            )
            return lines
        if self.verdict is Verdict.CUT:
            lines.append(
                f"CUT: the segment was cut after {self.cut_after} exchanges (no footer: the "
                f"gateway did not stop cleanly); {self.identical_samples} of them repeat byte "
                f"for byte and {self.tolerated_samples} within tolerance, but lines lost at the "
                "end of a cut segment cannot be seen, so it is not verified whole"
            )
            return lines
        total = self.samples_compared + self.unpaired_samples
        counts = (
            f"{self.identical_samples} identical, {self.tolerated_samples} within tolerance, "
            f"{self.divergent_samples} divergent of {total} samples "
            f"(match ratio {self.exact_match_ratio:.6g}; required "
            f"{self.thresholds.min_exact_match_ratio:g})"
        )
        headline = {
            Verdict.WITHIN_THRESHOLD: "WITHIN THRESHOLD",
            Verdict.DIVERGENT: "DIVERGENT",
            Verdict.NOT_A_REPLAY: "NOT A REPLAY",
        }[self.verdict]
        lines.append(f"{headline}: {counts}")
        if self.cut_after is not None:
            lines.append(f"the segment was cut after {self.cut_after} exchanges (no footer)")
        if self.header_differences:
            lines.append("header fields that differ:")
            lines.extend(f"  {difference}" for difference in self.header_differences)
        if self.unpaired_samples:
            lines.append(f"{self.unpaired_samples} samples are in one log only")
        if self.prompt_mismatch_count:
            lines.append(f"{self.prompt_mismatch_count} samples are for different prompts:")
            lines.extend(f"  {mismatch}" for mismatch in self.prompt_mismatches)
            if self.prompt_mismatch_count > len(self.prompt_mismatches):
                lines.append(
                    f"  ... {self.prompt_mismatch_count - len(self.prompt_mismatches)} more"
                )
        if self.divergences:
            lines.append("divergent samples:")
            lines.extend(f"  {divergence}" for divergence in self.divergences)
            if self.divergent_samples > len(self.divergences):
                lines.append(f"  ... {self.divergent_samples - len(self.divergences)} more")
        return lines

    def error(self) -> VerificationError | None:
        """The error to raise when the verdict is not ok."""
        if self.ok:
            return None
        if self.verdict is Verdict.CUT:
            return VerificationError(
                f"{self.run_a.path} was cut after {self.cut_after} exchanges: they repeat, but "
                "a cut segment is not verified whole",
                hint="replay a segment the gateway closed (its footer names every line)",
            )
        if self.verdict is Verdict.NOT_A_REPLAY:
            details = [str(d) for d in self.header_differences[:5]]
            details += [str(m) for m in self.prompt_mismatches[:3]]
            if self.unpaired_samples and not self.header_differences:
                details.append(f"{self.unpaired_samples} samples are in one log only")
            return PinMismatch(
                f"{self.run_b.path} is not a replay of {self.run_a.path}",
                details=details,
                hint="a replay needs the same pins, sampling parameters and prompts",
            )
        first = self.first_divergence
        return Divergence(
            f"{self.run_b.path} diverges from {self.run_a.path}: {self.divergent_samples} of "
            f"{self.samples_compared} samples differ",
            details=[str(first)] if first else [],
            hint=None
            if not self.thresholds.strict
            else "see the report for every divergent sample (--report-output REPORT)",
        )

    def as_json(self) -> dict[str, object]:
        return {
            "report": REPORT_FORMAT,
            "report_version": REPORT_VERSION,
            "mode": "pair",
            "ok": self.ok,
            "verdict": str(self.verdict),
            "run_a": self.run_a.as_json(),
            "run_b": self.run_b.as_json(),
            "thresholds": self.thresholds.as_json(),
            "header_differences": [d.as_json() for d in self.header_differences],
            "counts": {
                "samples_compared": self.samples_compared,
                "unpaired": self.unpaired_samples,
                "identical": self.identical_samples,
                "tolerated": self.tolerated_samples,
                "divergent": self.divergent_samples,
                "prompt_mismatches": self.prompt_mismatch_count,
            },
            "exact_match_ratio": self.exact_match_ratio,
            "prompt_mismatches": [m.as_json() for m in self.prompt_mismatches],
            "divergences": [d.as_json() for d in self.divergences],
            "divergences_reported": len(self.divergences),
            "incomplete_samples": self.incomplete_samples,
            "cut_after": self.cut_after,
        }


def refuse_same_file(paths: Sequence[Path]) -> None:
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue  # the reader reports it, as a bad log
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            raise UsageError(
                f"{path} and {seen[key]} are the same file: comparing a log with itself "
                "proves nothing",
                hint="compare logs sampled by separate runs",
            )
        seen[key] = path


def checked_pair(
    run_a: Path,
    run_b: Path,
    min_exact_match_ratio: float | None,
    logprob_tolerance: float | None,
    max_reported: int,
) -> tuple[Path, Path, Thresholds]:
    """A pair comparison's arguments checked before either log is read: the thresholds (strict
    by default), ``max_reported``, and two files that are not one."""
    thresholds = Thresholds(
        1.0 if min_exact_match_ratio is None else min_exact_match_ratio, logprob_tolerance
    )
    if max_reported < 0:
        raise UsageError(f"max_reported must be >= 0, found {max_reported}")
    run_a, run_b = Path(run_a), Path(run_b)
    refuse_same_file([run_a, run_b])
    return run_a, run_b, thresholds


def evaluate(
    run_a: Path,
    run_b: Path,
    *,
    min_exact_match_ratio: float | None = None,
    logprob_tolerance: float | None = None,
    max_reported: int = DEFAULT_MAX_REPORTED,
    progress: EvalProgress | None = None,
    expected_sha256: tuple[str | None, str | None] = (None, None),
) -> DeterminismReport:
    """Compare run B with run A, one line of each at a time, validating both completely.

    Raises :class:`RunLogError` when either log is invalid and :class:`UsageError` for bad
    thresholds; otherwise returns the report, whatever its verdict. ``expected_sha256``: the
    bytes each log had when it was verified earlier (a replay's plan, the sampler's hash); a
    log read as other bytes is :class:`~detserve.errors.EvidenceChanged`, never a verdict.
    """
    run_a, run_b, thresholds = checked_pair(
        run_a, run_b, min_exact_match_ratio, logprob_tolerance, max_reported
    )
    refusal = (
        "a gateway transcript is compared with a transcript "
        "(detserve.evaluation.transcript_pair), a sampled run log with a run log"
    )
    with open_pair(run_a, run_b, RunLogReader, refusal=refusal) as (log_a, log_b):
        headers = tuple(header_differences(log_a.header, log_b.header))
        announced = log_a.header.n_samples
        counts = count_samples(
            log_a.lines(),
            log_b.lines(),
            _sample_itself,
            thresholds,
            max_reported=max_reported,
            progress=None if progress is None else lambda done: progress(done, announced),
        )
        summary_a, summary_b = log_a.summary(), log_b.summary()
    require_same_bytes(run_a, summary_a.sha256, expected_sha256[0], what="run log")
    require_same_bytes(run_b, summary_b.sha256, expected_sha256[1], what="run log")
    return judge(LogRef.of(summary_a), LogRef.of(summary_b), thresholds, headers, counts)


def _sample_itself(sample: RunLogSample) -> tuple[RunLogSample, tuple[object, ...]]:
    return sample, (sample.prompt_id, sample.prompt_sha256, sample.request_sha256)


@dataclass(frozen=True)
class SampleCounts:
    """What one pass over two logs' records found, before any verdict."""

    compared: int
    unpaired: int
    identical: int
    tolerated: int
    divergent: int
    mismatch_count: int
    mismatches: tuple[PromptMismatch, ...]
    divergences: tuple[SampleDivergence, ...]


def count_samples(
    lines_a: Iterable[tuple[bytes, Record]],
    lines_b: Iterable[tuple[bytes, Record]],
    as_sample: Callable[[Record], tuple[RunLogSample, tuple[object, ...]]],
    thresholds: Thresholds,
    *,
    max_reported: int,
    progress: Callable[[int], None] | None = None,
) -> SampleCounts:
    """Pair two logs' records by position and count them: identical lines, other requests
    (prompt mismatches), tolerated and divergent samples; the first ``max_reported`` of each
    finding described.

    ``as_sample`` gives a record in a sample's terms together with what names its request; it is
    called only for records whose lines differ, and two records whose request keys differ are a
    prompt mismatch, never compared. ``progress`` is told the records compared so far.
    """
    identical = tolerated = divergent = compared = unpaired = mismatch_count = 0
    divergences: list[SampleDivergence] = []
    mismatches: list[PromptMismatch] = []
    for entry_a, entry_b in zip_longest(lines_a, lines_b):
        if entry_a is None or entry_b is None:
            unpaired += 1
            continue
        compared += 1
        if progress is not None and compared % PROGRESS_EVERY == 0:
            progress(compared)
        (line_a, record_a), (line_b, record_b) = entry_a, entry_b
        if line_a == line_b:
            identical += 1
            continue
        (sample_a, request_a), (sample_b, request_b) = as_sample(record_a), as_sample(record_b)
        if request_a != request_b:
            mismatch_count += 1
            if len(mismatches) < max_reported:
                mismatches.append(
                    PromptMismatch(
                        sample_a.index,
                        sample_a.prompt_id,
                        sample_b.prompt_id,
                        sample_a.prompt_sha256,
                        sample_b.prompt_sha256,
                    )
                )
            continue
        comparison = compare_samples(sample_a, sample_b, thresholds)
        if comparison.tolerated:
            tolerated += 1
            continue
        divergent += 1
        if len(divergences) < max_reported:
            divergences.append(comparison)
    if progress is not None:
        progress(compared)
    return SampleCounts(
        compared=compared,
        unpaired=unpaired,
        identical=identical,
        tolerated=tolerated,
        divergent=divergent,
        mismatch_count=mismatch_count,
        mismatches=tuple(mismatches),
        divergences=tuple(divergences),
    )


def judge(
    run_a: LogRef,
    run_b: LogRef,
    thresholds: Thresholds,
    headers: tuple[FieldDifference, ...],
    counts: SampleCounts,
    *,
    incomplete: int = 0,
    cut_after: int | None = None,
) -> DeterminismReport:
    """The verdict on two validated logs, from their hashes, header differences and counts.

    For gateway transcripts, ``incomplete`` counts exchanges that hold only the start of their
    answer and ``cut_after`` is set when a segment was cut: a pass is then INCOMPLETE (ok) or
    CUT (not ok), never IDENTICAL.
    """
    if run_a.sha256 == run_b.sha256:
        verdict = Verdict.IDENTICAL
    elif headers or counts.mismatch_count or counts.unpaired:
        verdict = Verdict.NOT_A_REPLAY
    else:
        # nothing compared and nothing different: two logs of no samples whose bytes differ only
        # where no field is compared (every such field is a header difference above)
        ratio = (counts.identical + counts.tolerated) / counts.compared if counts.compared else 1.0
        verdict = (
            Verdict.WITHIN_THRESHOLD
            if ratio >= thresholds.min_exact_match_ratio
            else Verdict.DIVERGENT
        )
    if verdict in (Verdict.IDENTICAL, Verdict.WITHIN_THRESHOLD):
        if cut_after is not None:
            verdict = Verdict.CUT
        elif incomplete and not counts.divergent:
            verdict = Verdict.INCOMPLETE
    return DeterminismReport(
        run_a=run_a,
        run_b=run_b,
        thresholds=thresholds,
        verdict=verdict,
        header_differences=headers,
        prompt_mismatches=counts.mismatches,
        prompt_mismatch_count=counts.mismatch_count,
        samples_compared=counts.compared,
        unpaired_samples=counts.unpaired,
        identical_samples=counts.identical,
        tolerated_samples=counts.tolerated,
        divergent_samples=counts.divergent,
        divergences=counts.divergences,
        incomplete_samples=incomplete,
        cut_after=cut_after,
    )
