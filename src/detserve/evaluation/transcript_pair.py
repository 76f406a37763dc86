"""Is transcript B a faithful replay of gateway transcript A? The pair comparison, for
transcripts.

The same verdicts and report as :func:`~detserve.evaluation.pair.evaluate`: identical bytes are
IDENTICAL; different pins or seed are NOT A REPLAY, and so are exchanges that are not the same
requests (other ids or request hashes: a "prompt mismatch"); otherwise each differing exchange
is described as a divergent sample (first divergent token, the text around it, both finish
reasons). Both transcripts are validated completely first; a cut one is refused (exit 2).
"""

from __future__ import annotations

import hashlib
from itertools import zip_longest
from pathlib import Path
from typing import Final

from detserve.canonical import canonical_bytes
from detserve.errors import UsageError
from detserve.evaluation.compare import (
    PromptMismatch,
    SampleDivergence,
    Thresholds,
    compare_samples,
    header_differences,
)
from detserve.evaluation.pair import (
    DEFAULT_MAX_REPORTED,
    DeterminismReport,
    Verdict,
    refuse_same_file,
)
from detserve.evaluation.report import LogRef
from detserve.runlog import LineParser, RunLogSample
from detserve.runlog.models import TranscriptExchange
from detserve.runlog.transcript import TranscriptReader, is_transcript, request_sha256

_SATISFIED: Final[dict[str | None, bool | None]] = {
    None: None,
    "not_checked": None,
    "satisfied": True,
    "violated": False,
    "cut": False,
}


def as_sample(exchange: TranscriptExchange) -> RunLogSample:
    """An exchange in a sample's terms, for the sample comparison: its id as the prompt id, its
    request hash as the prompt hash, an incomplete exchange's reason as its finish reason."""
    request = exchange.request
    constraint = request.constraint
    kind = next(iter(constraint)) if constraint else None
    digest = request_sha256(request)
    return RunLogSample(
        constraint=kind,  # type: ignore[arg-type]
        # what the gateway found: a violation or a cut is unsatisfied; unchecked is unknown
        constraint_satisfied=_SATISFIED[exchange.constraint_check],
        constraint_sha256=(
            hashlib.sha256(canonical_bytes(constraint)).hexdigest() if constraint else None
        ),
        finish_reason=exchange.finish_reason or "incomplete",
        index=exchange.index,
        kind=request.kind,
        logprobs=None,
        output_token_ids=exchange.output_token_ids,
        prompt_id=exchange.id,
        prompt_sha256=digest,
        prompt_token_ids=exchange.prompt_token_ids,
        request_sha256=digest,
        text=exchange.text,
    )


def evaluate_transcripts(
    run_a: Path,
    run_b: Path,
    *,
    min_exact_match_ratio: float | None = None,
    max_reported: int = DEFAULT_MAX_REPORTED,
) -> DeterminismReport:
    """Compare transcript B with transcript A, validating both completely; return the report
    whatever its verdict."""
    thresholds = Thresholds(1.0 if min_exact_match_ratio is None else min_exact_match_ratio, None)
    if max_reported < 0:
        raise UsageError(f"max_reported must be >= 0, found {max_reported}")
    run_a, run_b = Path(run_a), Path(run_b)
    refuse_same_file([run_a, run_b])
    if not (is_transcript(run_a) and is_transcript(run_b)):
        raise UsageError(
            "a gateway transcript is compared with a transcript, a sampled run log with a run log"
        )
    parser = LineParser()
    identical = divergent = compared = unpaired = mismatch_count = 0
    divergences: list[SampleDivergence] = []
    mismatches: list[PromptMismatch] = []
    with (
        TranscriptReader(run_a, parser=parser) as log_a,
        TranscriptReader(run_b, parser=parser) as log_b,
    ):
        headers = tuple(header_differences(log_a.header, log_b.header))
        for entry_a, entry_b in zip_longest(log_a.lines(), log_b.lines()):
            if entry_a is None or entry_b is None:
                unpaired += 1
                continue
            compared += 1
            (line_a, exchange_a), (line_b, exchange_b) = entry_a, entry_b
            if line_a == line_b:
                identical += 1
                continue
            sample_a, sample_b = as_sample(exchange_a), as_sample(exchange_b)
            if (sample_a.prompt_id, sample_a.prompt_sha256) != (
                sample_b.prompt_id,
                sample_b.prompt_sha256,
            ) or exchange_a.incomplete != exchange_b.incomplete:
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
            divergent += 1
            if len(divergences) < max_reported:
                divergences.append(compare_samples(sample_a, sample_b, thresholds))
        summary_a, summary_b = log_a.summary(), log_b.summary()
    if summary_a.sha256 == summary_b.sha256:
        verdict = Verdict.IDENTICAL
    elif headers or mismatch_count or unpaired:
        verdict = Verdict.NOT_A_REPLAY
    else:
        # logprobs are not recorded in transcripts: nothing is within a tolerance
        ratio = identical / compared
        verdict = (
            Verdict.WITHIN_THRESHOLD
            if ratio >= thresholds.min_exact_match_ratio
            else Verdict.DIVERGENT
        )
    return DeterminismReport(
        run_a=LogRef(summary_a.path, summary_a.sha256, summary_a.n_exchanges),
        run_b=LogRef(summary_b.path, summary_b.sha256, summary_b.n_exchanges),
        thresholds=thresholds,
        verdict=verdict,
        header_differences=headers,
        prompt_mismatches=tuple(mismatches),
        prompt_mismatch_count=mismatch_count,
        samples_compared=compared,
        unpaired_samples=unpaired,
        identical_samples=identical,
        tolerated_samples=0,
        divergent_samples=divergent,
        divergences=tuple(divergences),
    )
