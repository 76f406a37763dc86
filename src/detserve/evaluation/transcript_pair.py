"""Is transcript B a faithful replay of gateway transcript A? The pair comparison, for
transcripts.

The same verdicts and report as :func:`~detserve.evaluation.pair.evaluate`: identical bytes are
IDENTICAL; different pins or seed are NOT A REPLAY, and so are exchanges that are not the same
requests (other ids or request hashes, or not ended alike: a "prompt mismatch");
otherwise each differing exchange is described as a divergent sample (first divergent token, the
text around it, both finish reasons). Both transcripts are validated completely first.

What an incomplete record can verify, and no more:

* an *incomplete exchange* (a stream that ended early) holds the start of its answer only. A
  replay regenerates that start (:mod:`~detserve.gateway.replay`) and writes it as the claim
  recorded it, so its line is compared byte for byte like any other; but the pair is then
  INCOMPLETE (ok, exit 0), never IDENTICAL: what would have followed was never recorded;
* a *cut segment* (no footer: the gateway crashed) is compared up to its last whole line, both
  sides cut alike; the pair is then CUT (exit 1) even when every line repeats, because lines lost
  at the end of a cut segment cannot be seen; a divergence in what it holds is DIVERGENT.

The comparison is the run logs' own (:func:`~detserve.evaluation.pair.count_samples`); this
module only says what an exchange is in a sample's terms (:func:`as_sample`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from detserve.canonical import canonical_bytes
from detserve.evaluation.compare import FieldDifference, header_differences
from detserve.evaluation.pair import (
    DEFAULT_MAX_REPORTED,
    DeterminismReport,
    checked_pair,
    count_samples,
    judge,
)
from detserve.evaluation.report import LogRef
from detserve.runlog import RunLogSample, require_same_bytes
from detserve.runlog.kinds import open_pair
from detserve.runlog.models import TranscriptExchange
from detserve.runlog.transcript import TranscriptReader, request_sha256

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
    digest = request_sha256(request)
    return RunLogSample(
        constraint=None if constraint is None else constraint.kind,
        # what the gateway found: a violation or a cut is unsatisfied; unchecked is unknown
        constraint_satisfied=_SATISFIED[exchange.constraint_check],
        constraint_sha256=(
            None
            if constraint is None
            else hashlib.sha256(canonical_bytes({constraint.field: constraint.text})).hexdigest()
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
    expected_sha256: tuple[str | None, str | None] = (None, None),
) -> DeterminismReport:
    """Compare transcript B with transcript A, validating both completely; return the report
    whatever its verdict. ``expected_sha256`` as for :func:`~detserve.evaluation.evaluate`."""
    # logprobs are not recorded in transcripts: nothing is within a tolerance
    run_a, run_b, thresholds = checked_pair(run_a, run_b, min_exact_match_ratio, None, max_reported)
    incomplete = 0

    def counted(lines: Iterator[tuple[bytes, TranscriptExchange]]) -> Iterator[Any]:
        nonlocal incomplete
        for line, exchange in lines:
            incomplete += exchange.incomplete is not None
            yield line, exchange

    refusal = "a gateway transcript is compared with a transcript, a sampled run log with a run log"
    with open_pair(run_a, run_b, TranscriptReader, refusal=refusal, allow_cut=True) as (
        log_a,
        log_b,
    ):
        headers = tuple(header_differences(log_a.header, log_b.header))
        counts = count_samples(
            counted(log_a.lines()),
            log_b.lines(),
            _exchange_as_sample,
            thresholds,
            max_reported=max_reported,
        )
        summary_a, summary_b = log_a.summary(), log_b.summary()
    require_same_bytes(run_a, summary_a.sha256, expected_sha256[0], what="transcript")
    require_same_bytes(run_b, summary_b.sha256, expected_sha256[1], what="transcript")
    # Why each segment was closed is part of its bytes: a replay closes its segment the same way.
    # (The footer's hashes follow from the lines already compared.)
    reason_a = summary_a.footer.reason if summary_a.footer is not None else None
    reason_b = summary_b.footer.reason if summary_b.footer is not None else None
    if reason_a != reason_b:
        headers += (FieldDifference("transcript-end.reason", reason_a, reason_b),)
    cut = summary_a if summary_a.cut else summary_b if summary_b.cut else None
    return judge(
        LogRef(summary_a.path, summary_a.sha256, summary_a.n_exchanges),
        LogRef(summary_b.path, summary_b.sha256, summary_b.n_exchanges),
        thresholds,
        headers,
        counts,
        incomplete=incomplete,
        cut_after=None if cut is None else cut.n_exchanges,
    )


def _exchange_as_sample(
    exchange: TranscriptExchange,
) -> tuple[RunLogSample, tuple[object, ...]]:
    # The same request, and both complete or both left the same way: an exchange cut short on
    # one side only is another exchange, not a divergent one. (A delivery differs only with the
    # output: a replay repeats the claim's unless its output's check makes it impossible.)
    sample = as_sample(exchange)
    return sample, (sample.prompt_id, sample.prompt_sha256, exchange.incomplete)
