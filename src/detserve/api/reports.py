"""The face's evidence verbs: read run logs and transcripts, compare them, explain why they
differ, and write the report.

Wrappers only over :mod:`detserve.runlog` and :mod:`detserve.evaluation`. A comparison's verdict
is data: :func:`evaluate` returns the report whatever it says, and ``report.error()`` is the
error to raise when it is not a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from detserve.errors import UsageError
from detserve.fileio import check_outputs

if TYPE_CHECKING:
    from detserve.evaluation import DeterminismReport, HashCheckReport, MajorityReport
    from detserve.evaluation.explain import ExplainedReport
    from detserve.runlog import RunLogHeader, RunLogSummary
    from detserve.runlog.series import TranscriptSeries
    from detserve.runlog.transcript import TranscriptSummary


@dataclass(frozen=True)
class Evidence:
    """A file of evidence, validated completely: exactly one of ``series`` (a directory of
    transcript segments, each gateway run's chain checked), ``transcript`` (one segment) and
    ``run_log`` (with ``replay_needs``: :func:`replay_requirements` of its header)."""

    path: Path
    series: list[TranscriptSeries] | None = None
    transcript: TranscriptSummary | None = None
    run_log: RunLogSummary | None = None
    replay_needs: list[tuple[str, str]] = field(default_factory=list)


def read_evidence(path: Path | str, *, allow_cut: bool = False) -> Evidence:
    """``detserve runlog show`` and ``validate`` in one call: a directory is
    :func:`validate_transcripts`, a file that begins with a transcript's header
    :func:`show_transcript`, anything else :func:`show_run_log`. Whatever does not validate
    raises as those do."""
    from detserve.runlog.kinds import is_transcript as is_transcript_core

    evidence = Path(path)
    if evidence.is_dir():
        return Evidence(evidence, series=validate_transcripts(evidence, allow_cut=allow_cut))
    if is_transcript_core(evidence):
        return Evidence(evidence, transcript=show_transcript(evidence, allow_cut=allow_cut))
    summary = show_run_log(evidence)
    return Evidence(evidence, run_log=summary, replay_needs=replay_requirements(summary.header))


def show_run_log(path: Path | str) -> RunLogSummary:
    """Validate a run log completely (schema, canonical form, order, footer) and summarise it."""
    from detserve.runlog import validate_run_log

    return validate_run_log(Path(path))


def show_transcript(path: Path | str, *, allow_cut: bool = False) -> TranscriptSummary:
    """Validate one gateway transcript segment completely (schema, canonical form, order,
    footer) and summarise it; a cut segment (no footer) raises unless ``allow_cut``."""
    from detserve.runlog.transcript import validate_transcript

    return validate_transcript(Path(path), allow_cut=allow_cut)


def validate_transcripts(
    directory: Path | str, *, allow_cut: bool = False
) -> list[TranscriptSeries]:
    """Validate every transcript segment of ``directory`` and the hash chain of each gateway
    run's series; raise :class:`~detserve.errors.ChainBroken` (exit 1) naming a segment missing,
    reordered, renamed or substituted, and :class:`~detserve.errors.RunLogError` (exit 2) for a
    segment that does not validate. A cut last segment raises unless ``allow_cut``. A directory
    that holds no segment raises :class:`~detserve.errors.RunLogError` too: nothing was
    validated, and that is no pass."""
    from detserve.errors import RunLogError
    from detserve.runlog.series import validate_transcript_dir
    from detserve.runlog.transcript import SUFFIX

    series = validate_transcript_dir(Path(directory), allow_cut=allow_cut)
    if not series:
        raise RunLogError(
            f"{directory}: no transcript segment (*{SUFFIX}) to validate",
            hint="give a run log, a transcript segment, or a directory `detserve serve "
            "--transcript-dir` wrote into",
        )
    return series


def evaluate(
    run_a: Path | str,
    run_b: Path | str,
    *,
    min_exact_match_ratio: float | None = None,
    logprob_tolerance: float | None = None,
    max_reported: int = 20,
    report: Path | str | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DeterminismReport:
    """Compare two run logs (or two gateway transcripts) byte for byte and say where they part;
    write the JSON ``report``.

    Returns the report whatever its verdict (IDENTICAL, WITHIN_THRESHOLD, DIVERGENT, NOT A
    REPLAY); ``report.error()`` is the error to raise when it is not a pass. Invalid logs raise
    (exit 2) before anything is compared.
    """
    from detserve.evaluation import evaluate as evaluate_core
    from detserve.runlog.kinds import is_transcript

    logs = [Path(run_a), Path(run_b)]
    output = Path(report) if report is not None else None
    if output is not None:
        check_outputs([output], force=force, inputs=logs)  # a log is evidence: never replaced
    if any(is_transcript(log) for log in logs):
        from detserve.evaluation.transcript_pair import evaluate_transcripts

        if logprob_tolerance is not None:
            raise UsageError("--logprob-tolerance: a gateway transcript records no logprobs")
        result = evaluate_transcripts(
            logs[0], logs[1], min_exact_match_ratio=min_exact_match_ratio, max_reported=max_reported
        )
    else:
        result = evaluate_core(
            logs[0],
            logs[1],
            min_exact_match_ratio=min_exact_match_ratio,
            logprob_tolerance=logprob_tolerance,
            max_reported=max_reported,
            progress=progress,
        )
    if output is not None:
        write_json_report(output, result.as_json(), force=force)
    return result


def check_hash(
    run_log: Path | str,
    expected_sha256: str,
    *,
    report: Path | str | None = None,
    force: bool = False,
) -> HashCheckReport:
    """Check one run log against a published sha256 (after validating it completely)."""
    from detserve.evaluation import check_expected_hash

    output = Path(report) if report is not None else None
    if output is not None:
        check_outputs([output], force=force, inputs=[Path(run_log)])
    result = check_expected_hash(Path(run_log), expected_sha256)
    if output is not None:
        write_json_report(output, result.as_json(), force=force)
    return result


def compare_runs(
    run_logs: Sequence[Path | str],
    *,
    max_reported: int = 20,
    report: Path | str | None = None,
    force: bool = False,
    progress: Callable[[Path], None] | None = None,
) -> MajorityReport:
    """Group one run log per node by sha256 and name the nodes that disagree with the majority."""
    from detserve.evaluation import compare_many

    logs = [Path(path) for path in run_logs]
    output = Path(report) if report is not None else None
    if output is not None:
        check_outputs([output], force=force, inputs=logs)
    result = compare_many(logs, max_reported=max_reported, progress=progress)
    if output is not None:
        write_json_report(output, result.as_json(), force=force)
    return result


def explain(
    result: DeterminismReport | HashCheckReport | MajorityReport,
    sidecars: Sequence[Path | str],
    *,
    report: Path | str | None = None,
    force: bool = False,
) -> ExplainedReport:
    """A comparison's ``result`` with, for every log that disagrees, its first divergence and
    the differences of its environment fingerprint from the reference's, ranked by root-cause
    category (hardware, software version, numerics settings, model files, concurrency).

    ``sidecars`` are one per log in the comparison's order (for ``check_hash``: the log's, then
    the published log's), each naming that log's sha256: a sidecar of another run log, one
    naming none and a bare ``detserve env`` fingerprint file (bound to no run) are
    :class:`~detserve.errors.InputError` (exit 2).
    """
    from detserve.evaluation.explain import explain as explain_core
    from detserve.evaluation.explain import report_logs

    paths = [Path(sidecar) for sidecar in sidecars]
    output = Path(report) if report is not None else None
    if output is not None:
        # every file the report was made from is an input: the logs compared and the sidecars
        check_outputs([output], force=force, inputs=[*report_logs(result), *paths])
    explained = explain_core(result, paths)
    if output is not None:
        write_json_report(output, explained.as_json(), force=force)
    return explained


def eval_determinism(
    *,
    run_a: Path | str | None = None,
    run_b: Path | str | None = None,
    runs: Sequence[Path | str] = (),
    expected_hash: str | None = None,
    sidecars: Sequence[Path | str] = (),
    min_exact_match_ratio: float | None = None,
    logprob_tolerance: float | None = None,
    max_reported: int = 20,
    report: Path | str | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    on_validating: Callable[[Path], None] | None = None,
) -> DeterminismReport | HashCheckReport | MajorityReport | ExplainedReport:
    """``detserve eval-determinism`` in one call: which comparison the arguments ask for, then,
    with ``sidecars``, its explanation; the one report written to ``report``.

    Two logs (``run_a``, ``run_b``): :func:`evaluate` (``progress`` per sample). One log against
    a published sha256 (``run_a``, ``expected_hash``): :func:`check_hash`. Three or more
    (``runs``): :func:`compare_runs` (``on_validating`` per log). Any other combination, or
    thresholds where the comparison is exact, is :class:`~detserve.errors.UsageError` (exit 2)
    before a file is read.
    """
    thresholds = min_exact_match_ratio is not None or logprob_tolerance is not None
    compared_report = None if sidecars else report  # with sidecars the explained one is written
    result: DeterminismReport | HashCheckReport | MajorityReport
    if runs:
        if run_a is not None or run_b is not None or expected_hash is not None:
            raise UsageError("--run (majority mode) excludes --run-a, --run-b and --expected-hash")
        if thresholds:
            raise UsageError("the majority mode groups logs by sha256: thresholds do not apply")
        result = compare_runs(
            runs,
            max_reported=max_reported,
            report=compared_report,
            force=force,
            progress=on_validating,
        )
    elif expected_hash is not None:
        if run_a is None or run_b is not None:
            raise UsageError("--expected-hash checks one log: give --run-a PATH, not --run-b")
        if thresholds:
            raise UsageError("--expected-hash is an exact check: thresholds do not apply")
        result = check_hash(run_a, expected_hash, report=compared_report, force=force)
    elif run_a is not None and run_b is not None:
        result = evaluate(
            run_a,
            run_b,
            min_exact_match_ratio=min_exact_match_ratio,
            logprob_tolerance=logprob_tolerance,
            max_reported=max_reported,
            report=compared_report,
            force=force,
            progress=progress,
        )
    else:
        raise UsageError(
            "give --run-a A --run-b B, or --run-a A --expected-hash SHA256, or --run PATH "
            "three or more times",
            hint="see `detserve eval-determinism --help` for examples",
        )
    if sidecars:
        return explain(result, sidecars, report=report, force=force)
    return result


def write_json_report(path: Path, document: dict[str, object], *, force: bool) -> None:
    """A JSON report for people and machines (indented, sorted keys), written atomically."""
    from detserve.fileio import write_json_report as write_report

    write_report(path, document, force=force)


def is_transcript(path: Path | str) -> bool:
    """Whether ``path`` begins with a gateway transcript's header (nothing else is checked: the
    show and replay functions validate the whole file); a file that cannot be read is not one."""
    from detserve.runlog.kinds import is_transcript as is_transcript_core

    return is_transcript_core(Path(path))


def replay_requirements(header: RunLogHeader) -> list[tuple[str, str]]:
    """What a verifier's profile must hold for :func:`replay` to accept a claim with this
    header (``show_run_log(path).header``): (profile field, required value), the claim's pins
    translated into the profile fields and files that produce them."""
    from detserve.replay_plan import replay_requirements as requirements

    return requirements(header)
