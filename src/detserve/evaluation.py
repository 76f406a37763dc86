"""Determinism evaluation: are two run logs the same run, and where do they part?

Three questions, each answered by reading the logs once, in bounded memory whatever their length:

* :func:`evaluate`: is run B a faithful replay of run A? Identical bytes are identical; otherwise
  the headers are compared (different pins or sampling: "not a replay", each differing field
  listed with both values), then the samples, in lock-step: for each divergent sample the first
  divergent output token, ±8 tokens of both sides, the text around the first differing
  character, both finish reasons and the logprob differences.
* :func:`check_expected_hash`: is this log the one whose sha256 was published?
* :func:`compare_many`: given one log per node, which agree with the majority?

Every log is fully validated (:mod:`detserve.runlog`) before a verdict is given: an invalid log
is a :class:`RunLogError` (exit 2), never a verdict. The functions return reports, whatever the
verdict, because a failed comparison is still a result someone must read; each report's
:meth:`error` is the :class:`VerificationError` to raise when it is not ok (exit 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import zip_longest
from pathlib import Path
from typing import Any, Final

from detserve.errors import Divergence, PinMismatch, UsageError, VerificationError
from detserve.runlog import (
    LineParser,
    RunLogHeader,
    RunLogReader,
    RunLogSample,
    RunLogSummary,
    validate_run_log,
)
from detserve.sequences import first_difference

REPORT_FORMAT: Final = "detserve-eval-determinism"
REPORT_VERSION: Final = 1
#: tokens shown on each side of the first divergent token
TOKEN_WINDOW: Final = 8
#: characters shown on each side of the first differing character of the texts
TEXT_WINDOW: Final = 64
#: divergent samples described in full by default; all are counted
DEFAULT_MAX_REPORTED: Final = 20
#: samples between two progress calls
PROGRESS_EVERY: Final = 4096

#: called with (samples compared so far, samples announced by run A's header)
EvalProgress = Callable[[int, int], None]

_SAMPLE_FIELDS: Final = (
    "prompt_token_ids",
    "output_token_ids",
    "text",
    "finish_reason",
    "logprobs",
)


def _differ(a: object, b: object) -> bool:
    """Whether two validated values are written differently in a run log.

    Under RFC 8785 two finite doubles have the same bytes exactly when they are equal (-0.0 and
    0.0 are both ``0``), and the records' types are fixed, so ``!=`` is the byte comparison
    without serialising anything (rfc8785 is pure Python; a log can diverge on every sample).
    """
    return a != b


class Verdict(StrEnum):
    IDENTICAL = "identical"
    WITHIN_THRESHOLD = "within-threshold"
    DIVERGENT = "divergent"
    NOT_A_REPLAY = "not-a-replay"


@dataclass(frozen=True)
class Thresholds:
    """What still counts as a faithful replay. The default is strict: every sample identical."""

    min_exact_match_ratio: float = 1.0
    """Fraction of samples that must match exactly, in (0, 1]."""

    logprob_tolerance: float | None = None
    """A sample whose tokens, text and finish reason are identical and whose logprobs differ by at
    most this much still matches; None: logprobs must be identical too."""

    def __post_init__(self) -> None:
        ratio = self.min_exact_match_ratio
        if not (math.isfinite(ratio) and 0 < ratio <= 1):
            raise UsageError(f"--min-exact-match-ratio must be in (0, 1], found {ratio}")
        tolerance = self.logprob_tolerance
        if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
            raise UsageError(f"--logprob-tolerance must be a number >= 0, found {tolerance}")

    @property
    def strict(self) -> bool:
        return self.min_exact_match_ratio == 1 and self.logprob_tolerance is None

    def as_json(self) -> dict[str, object]:
        return {
            "min_exact_match_ratio": self.min_exact_match_ratio,
            "logprob_tolerance": self.logprob_tolerance,
            "strict": self.strict,
        }


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


@dataclass(frozen=True)
class FieldDifference:
    """A header field whose values differ."""

    field: str
    run_a: object
    run_b: object

    def as_json(self) -> dict[str, object]:
        return {"field": self.field, "run_a": self.run_a, "run_b": self.run_b}

    def __str__(self) -> str:
        # In full: header values are bounded by the schema, and two pins that differ in their
        # last character must not read alike.
        return f"{self.field}: run A {self.run_a!r}, run B {self.run_b!r}"


@dataclass(frozen=True)
class PromptMismatch:
    """Samples at one index that are not for the same prompt."""

    index: int
    run_a_prompt_id: str
    run_b_prompt_id: str
    run_a_prompt_sha256: str
    run_b_prompt_sha256: str

    def as_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "run_a": {"prompt_id": self.run_a_prompt_id, "prompt_sha256": self.run_a_prompt_sha256},
            "run_b": {"prompt_id": self.run_b_prompt_id, "prompt_sha256": self.run_b_prompt_sha256},
        }

    def __str__(self) -> str:
        return (
            f"sample {self.index}: run A prompt {self.run_a_prompt_id!r} "
            f"({self.run_a_prompt_sha256[:12]}), run B prompt {self.run_b_prompt_id!r} "
            f"({self.run_b_prompt_sha256[:12]})"
        )


@dataclass(frozen=True)
class TokenWindow:
    """Output tokens ``start .. start + len - 1`` of both runs around the first divergence."""

    start: int
    run_a: tuple[int, ...]
    run_b: tuple[int, ...]

    def as_json(self) -> dict[str, object]:
        return {"start": self.start, "run_a": list(self.run_a), "run_b": list(self.run_b)}


@dataclass(frozen=True)
class TextWindow:
    """The decoded texts around their first differing character."""

    first_divergence: int
    start: int
    run_a: str
    run_b: str

    def as_json(self) -> dict[str, object]:
        return {
            "first_divergence": self.first_divergence,
            "start": self.start,
            "run_a": self.run_a,
            "run_b": self.run_b,
        }


@dataclass(frozen=True)
class LogprobDifference:
    """How far the logprobs of the positions both runs have apart."""

    max_abs_diff: float
    position: int
    first_difference: int | None
    compared: int

    def as_json(self) -> dict[str, object]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "position": self.position,
            "first_difference": self.first_difference,
            "compared": self.compared,
        }


@dataclass(frozen=True)
class SampleDivergence:
    """One sample that is not identical in both runs."""

    index: int
    prompt_id: str
    fields: tuple[str, ...]
    """The sample fields that differ, in record order."""
    first_divergence: int | None
    """The first output token index that differs (the shorter length when one output is a prefix
    of the other); None when the output tokens are identical."""
    output_lengths: tuple[int, int]
    window: TokenWindow | None
    text: TextWindow | None
    finish_reasons: tuple[str, str]
    logprobs: LogprobDifference | None
    """None unless both runs recorded logprobs."""
    prompt_first_divergence: int | None
    """The first prompt token index that differs: the two servers tokenized the prompt apart."""
    tolerated: bool
    """Only logprobs differ, within the tolerance: counts as a match."""

    def as_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "prompt_id": self.prompt_id,
            "fields": list(self.fields),
            "first_divergence": self.first_divergence,
            "output_lengths": {"run_a": self.output_lengths[0], "run_b": self.output_lengths[1]},
            "window": self.window.as_json() if self.window else None,
            "text": self.text.as_json() if self.text else None,
            "finish_reason": {"run_a": self.finish_reasons[0], "run_b": self.finish_reasons[1]},
            "logprobs": self.logprobs.as_json() if self.logprobs else None,
            "prompt_first_divergence": self.prompt_first_divergence,
            "tolerated": self.tolerated,
        }

    def __str__(self) -> str:
        parts = [f"sample {self.index} ({self.prompt_id}):"]
        if self.first_divergence is not None and self.window is not None:
            offset = self.first_divergence - self.window.start
            token_a = _at(self.window.run_a, offset)
            token_b = _at(self.window.run_b, offset)
            parts.append(
                f"output token {self.first_divergence} differs (run A {token_a}, run B {token_b});"
            )
        else:
            parts.append(f"{', '.join(self.fields)} differ{'s' if len(self.fields) == 1 else ''};")
        if self.prompt_first_divergence is not None:
            parts.append(f"prompt token {self.prompt_first_divergence} differs;")
        parts.append(
            f"lengths {self.output_lengths[0]}/{self.output_lengths[1]}, "
            f"finish {self.finish_reasons[0]}/{self.finish_reasons[1]}"
        )
        if self.logprobs is not None and self.logprobs.max_abs_diff:
            parts.append(
                f"; logprobs max |diff| {self.logprobs.max_abs_diff:.3g} "
                f"at {self.logprobs.position}"
            )
        if self.tolerated:
            parts.append(" (within --logprob-tolerance)")
        return " ".join(parts).replace(" ;", ";")


def _at(tokens: tuple[int, ...], offset: int) -> str:
    return str(tokens[offset]) if 0 <= offset < len(tokens) else "end"


# --- comparing two samples ----------------------------------------------------------------------


def _text_window(a: str, b: str) -> TextWindow | None:
    first = first_difference(a, b)
    if first is None:
        return None
    start = max(0, first - TEXT_WINDOW)
    end = first + TEXT_WINDOW
    return TextWindow(first, start, a[start:end], b[start:end])


def _logprob_difference(
    a: tuple[float, ...] | None, b: tuple[float, ...] | None
) -> LogprobDifference | None:
    if a is None or b is None:
        return None
    max_diff, position, first = 0.0, 0, None
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        diff = abs(x - y)
        if first is None and _differ(x, y):
            first = i
        if diff > max_diff:
            max_diff, position = diff, i
    return LogprobDifference(max_diff, position, first, min(len(a), len(b)))


def _compare_samples(a: RunLogSample, b: RunLogSample, thresholds: Thresholds) -> SampleDivergence:
    fields = tuple(name for name in _SAMPLE_FIELDS if _differ(getattr(a, name), getattr(b, name)))
    first = first_difference(a.output_token_ids, b.output_token_ids)
    window = None
    if first is not None:
        start = max(0, first - TOKEN_WINDOW)
        end = first + TOKEN_WINDOW + 1
        window = TokenWindow(start, a.output_token_ids[start:end], b.output_token_ids[start:end])
    logprobs = _logprob_difference(a.logprobs, b.logprobs)
    tolerated = (
        fields == ("logprobs",)
        and thresholds.logprob_tolerance is not None
        and logprobs is not None
        and logprobs.max_abs_diff <= thresholds.logprob_tolerance
    )
    return SampleDivergence(
        index=a.index,
        prompt_id=a.prompt_id,
        fields=fields,
        first_divergence=first,
        output_lengths=(len(a.output_token_ids), len(b.output_token_ids)),
        window=window,
        text=_text_window(a.text, b.text),
        finish_reasons=(a.finish_reason, b.finish_reason),
        logprobs=logprobs,
        prompt_first_divergence=first_difference(a.prompt_token_ids, b.prompt_token_ids),
        tolerated=tolerated,
    )


def header_differences(a: RunLogHeader, b: RunLogHeader) -> list[FieldDifference]:
    """Every header field whose values differ, sorted by name (``pins.image``, ``n_samples``)."""
    flat_a, flat_b = _flatten(a.model_dump()), _flatten(b.model_dump())
    return [
        FieldDifference(name, flat_a.get(name), flat_b.get(name))
        for name in sorted(flat_a.keys() | flat_b.keys())
        if _differ(flat_a.get(name), flat_b.get(name))
    ]


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


# --- two logs -----------------------------------------------------------------------------------


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

    @property
    def ok(self) -> bool:
        return self.verdict in (Verdict.IDENTICAL, Verdict.WITHIN_THRESHOLD)

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
            else "see the report for every divergent sample (--output REPORT)",
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
        }


def _refuse_same_file(paths: Sequence[Path]) -> None:
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


def evaluate(
    run_a: Path,
    run_b: Path,
    *,
    min_exact_match_ratio: float | None = None,
    logprob_tolerance: float | None = None,
    max_reported: int = DEFAULT_MAX_REPORTED,
    progress: EvalProgress | None = None,
) -> DeterminismReport:
    """Compare run B with run A, one line of each at a time, validating both completely.

    Raises :class:`RunLogError` when either log is invalid and :class:`UsageError` for bad
    thresholds; otherwise returns the report, whatever its verdict.
    """
    thresholds = Thresholds(
        1.0 if min_exact_match_ratio is None else min_exact_match_ratio, logprob_tolerance
    )
    if max_reported < 0:
        raise UsageError(f"max_reported must be >= 0, found {max_reported}")
    run_a, run_b = Path(run_a), Path(run_b)
    _refuse_same_file([run_a, run_b])
    # One parser for both: a line the two logs share is validated once.
    parser = LineParser()
    identical = tolerated = divergent = compared = unpaired = mismatch_count = 0
    divergences: list[SampleDivergence] = []
    mismatches: list[PromptMismatch] = []
    with (
        RunLogReader(run_a, parser=parser) as log_a,
        RunLogReader(run_b, parser=parser) as log_b,
    ):
        headers = tuple(header_differences(log_a.header, log_b.header))
        announced = log_a.header.n_samples
        for entry_a, entry_b in zip_longest(log_a.lines(), log_b.lines()):
            if entry_a is None or entry_b is None:
                unpaired += 1
                continue
            compared += 1
            if progress is not None and compared % PROGRESS_EVERY == 0:
                progress(compared, announced)
            line_a, sample_a = entry_a
            line_b, sample_b = entry_b
            if line_a == line_b:
                identical += 1
                continue
            if (
                sample_a.prompt_id != sample_b.prompt_id
                or sample_a.prompt_sha256 != sample_b.prompt_sha256
            ):
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
            comparison = _compare_samples(sample_a, sample_b, thresholds)
            if comparison.tolerated:
                tolerated += 1
                continue
            divergent += 1
            if len(divergences) < max_reported:
                divergences.append(comparison)
        if progress is not None:
            progress(compared, announced)
        summary_a, summary_b = log_a.summary(), log_b.summary()

    if summary_a.sha256 == summary_b.sha256:
        verdict = Verdict.IDENTICAL
    elif headers or mismatch_count or unpaired:
        verdict = Verdict.NOT_A_REPLAY
    else:
        ratio = (identical + tolerated) / compared
        verdict = (
            Verdict.WITHIN_THRESHOLD
            if ratio >= thresholds.min_exact_match_ratio
            else Verdict.DIVERGENT
        )
    return DeterminismReport(
        run_a=LogRef.of(summary_a),
        run_b=LogRef.of(summary_b),
        thresholds=thresholds,
        verdict=verdict,
        header_differences=headers,
        prompt_mismatches=tuple(mismatches),
        prompt_mismatch_count=mismatch_count,
        samples_compared=compared,
        unpaired_samples=unpaired,
        identical_samples=identical,
        tolerated_samples=tolerated,
        divergent_samples=divergent,
        divergences=tuple(divergences),
    )


# --- one log and its published hash -------------------------------------------------------------


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


# --- several logs -------------------------------------------------------------------------------


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
    _refuse_same_file(paths)
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
