"""The verdict of a check: every pass against the concurrency-1 baseline, and where they part.

Pure: it reads :class:`~detserve.diagnosis.measure.Measurements` and returns a
:class:`Diagnosis`; nothing is asked of a server. Categories (detLLM's tiers):

* ``RUN_VARIANCE``: at some fixed concurrency, two runs in the bundle's order gave other tokens;
* ``BATCH_VARIANCE``: every level repeats itself, but some level (or a shuffled order) gives
  other tokens than concurrency 1;
* ``LOGPROB_VARIANCE`` (tier 2): tokens equal everywhere, logprobs not, compared bit for bit
  (``float.hex``: ``-0.0`` is not ``0.0``);
* ``LOGPROBS_UNAVAILABLE`` (tier 2): the server returned no logprob for some token, so tier 2
  cannot be decided; what it returned is named;
* ``ENV_CHANGED``: the container or the environment changed during the check (decided by
  :mod:`~detserve.diagnosis.check`, never here);
* ``PASS``: none of these at the requested tier. Tier 0 makes no equality promise: it passes
  whatever the measured category, which is still reported.

The first divergence of each prompt is the first pass, in pass order, whose tokens (or, at tier
2 with equal tokens, logprobs) differ from the baseline's, with the token index and a window of
tokens on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from detserve.diagnosis.measure import Measurements, Observation, PassKey, Tier
from detserve.first_difference import first_difference

#: tokens shown on each side of a first divergence
WINDOW = 4


class Verdict(StrEnum):
    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    RUN_VARIANCE = "RUN_VARIANCE"
    BATCH_VARIANCE = "BATCH_VARIANCE"
    LOGPROB_VARIANCE = "LOGPROB_VARIANCE"
    LOGPROBS_UNAVAILABLE = "LOGPROBS_UNAVAILABLE"
    ENV_CHANGED = "ENV_CHANGED"


def _bits(logprobs: tuple[float | None, ...] | None) -> tuple[str | None, ...] | None:
    if logprobs is None:
        return None
    return tuple(None if value is None else float(value).hex() for value in logprobs)


@dataclass(frozen=True)
class FirstDivergence:
    """Where one prompt first parts from the baseline."""

    prompt_index: int
    prompt_id: str
    key: PassKey
    kind: str  # "tokens" or "logprobs"
    token_index: int
    baseline_window: tuple[int, ...]
    other_window: tuple[int, ...]
    baseline_text: str
    other_text: str
    baseline_logprob: float | None = None
    other_logprob: float | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "prompt_index": self.prompt_index,
            "prompt_id": self.prompt_id,
            "concurrency": self.key.concurrency,
            "run": self.key.run,
            "order": self.key.order,
            "kind": self.kind,
            "token_index": self.token_index,
            "window_start": max(0, self.token_index - WINDOW),
            "baseline_tokens": list(self.baseline_window),
            "other_tokens": list(self.other_window),
            "baseline_text": self.baseline_text,
            "other_text": self.other_text,
            "baseline_logprob": self.baseline_logprob,
            "other_logprob": self.other_logprob,
        }


def _divergence(base: Observation, other: Observation, tier: Tier) -> FirstDivergence | None:
    index = first_difference(base.token_ids, other.token_ids)
    kind = "tokens"
    base_lp = other_lp = None
    if index is None:
        if tier < 2:
            return None
        index = first_difference(_bits(base.logprobs) or (), _bits(other.logprobs) or ())
        if index is None:
            return None
        kind = "logprobs"
        base_lp = base.logprobs[index] if base.logprobs and index < len(base.logprobs) else None
        other_lp = other.logprobs[index] if other.logprobs and index < len(other.logprobs) else None
    start = max(0, index - WINDOW)
    return FirstDivergence(
        prompt_index=base.prompt_index,
        prompt_id=base.prompt_id,
        key=other.key,
        kind=kind,
        token_index=index,
        baseline_window=base.token_ids[start : index + WINDOW + 1],
        other_window=other.token_ids[start : index + WINDOW + 1],
        baseline_text=base.text,
        other_text=other.text,
        baseline_logprob=base_lp,
        other_logprob=other_lp,
    )


@dataclass(frozen=True)
class LevelSummary:
    """One concurrency level against itself and against the baseline."""

    concurrency: int
    runs_identical: bool
    logprobs_runs_identical: bool
    matches_baseline: bool
    logprobs_match_baseline: bool
    shuffled_matches_baseline: bool | None
    #: per prompt index: the first token that differs from the baseline at this level, or None
    first_divergent_token: tuple[int | None, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "concurrency": self.concurrency,
            "runs_identical": self.runs_identical,
            "logprobs_runs_identical": self.logprobs_runs_identical,
            "matches_baseline": self.matches_baseline,
            "logprobs_match_baseline": self.logprobs_match_baseline,
            "shuffled_matches_baseline": self.shuffled_matches_baseline,
            "first_divergent_token": list(self.first_divergent_token),
        }


@dataclass(frozen=True)
class Diagnosis:
    """The verdict at a tier, why, the levels and each prompt's first divergence."""

    verdict: Verdict
    tier: Tier
    reason: str
    levels: tuple[LevelSummary, ...]
    divergences: tuple[FirstDivergence, ...]
    logprobs_note: str | None = None

    @property
    def passed(self) -> bool:
        """Exit 0: a pass at the tier; tier 0 promises nothing, unless the environment changed."""
        if self.verdict is Verdict.ENV_CHANGED:
            return False
        return self.tier == 0 or self.verdict is Verdict.PASS


def _tokens(observations: tuple[Observation, ...]) -> list[tuple[int, ...]]:
    return [obs.token_ids for obs in observations]


def _logprob_bits(observations: tuple[Observation, ...]) -> list[tuple[str | None, ...] | None]:
    return [_bits(obs.logprobs) for obs in observations]


def _unavailable(measurements: Measurements) -> str | None:
    for key, observations in measurements.passes.items():
        for obs in observations:
            if obs.logprobs is None:
                return f"{key.label()} {obs.prompt_id}: the server returned no logprobs (null)"
            if None in obs.logprobs:
                where = obs.logprobs.index(None)
                return (
                    f"{key.label()} {obs.prompt_id}: the server returned null as the logprob of "
                    f"token {where} of {len(obs.logprobs)}"
                )
    return None


def diagnose(measurements: Measurements, tier: Tier) -> Diagnosis:
    """Compare every pass with the baseline and with the other runs of its level."""
    baseline = measurements.baseline
    levels: list[LevelSummary] = []
    by_prompt: dict[int, FirstDivergence] = {}
    run_variance: list[str] = []
    batch_variance: list[str] = []
    logprob_variance: list[str] = []
    for level in measurements.plan.levels:
        keys = [key for key in measurements.passes if key.concurrency == level]
        runs = [measurements.passes[k] for k in keys if k.order == "bundle"]
        shuffled = [measurements.passes[k] for k in keys if k.order == "shuffled"]
        runs_identical = all(_tokens(run) == _tokens(runs[0]) for run in runs)
        lp_runs_identical = all(_logprob_bits(run) == _logprob_bits(runs[0]) for run in runs)
        matches = all(_tokens(p) == _tokens(baseline) for p in runs + shuffled)
        lp_matches = all(_logprob_bits(p) == _logprob_bits(baseline) for p in runs + shuffled)
        shuffled_ok = all(_tokens(p) == _tokens(baseline) for p in shuffled) if shuffled else None
        first_tokens: list[int | None] = []
        for prompt_index, base in enumerate(baseline):
            found = [
                _divergence(base, measurements.passes[key][prompt_index], tier)
                for key in keys
                if key != PassKey(1, 1, "bundle")
            ]
            divergences = [d for d in found if d is not None]
            first_tokens.append(min((d.token_index for d in divergences), default=None))
            if divergences and prompt_index not in by_prompt:
                by_prompt[prompt_index] = divergences[0]
        levels.append(
            LevelSummary(
                concurrency=level,
                runs_identical=runs_identical,
                logprobs_runs_identical=lp_runs_identical,
                matches_baseline=matches,
                logprobs_match_baseline=lp_matches,
                shuffled_matches_baseline=shuffled_ok,
                first_divergent_token=tuple(first_tokens),
            )
        )
        if not runs_identical:
            run_variance.append(str(level))
        elif not matches:
            batch_variance.append(
                str(level) + ("" if shuffled_ok in (None, True) else " (shuffled)")
            )
        if not (lp_runs_identical and lp_matches):
            logprob_variance.append(str(level))
    note = _unavailable(measurements) if measurements.plan.logprobs is not None else None
    if run_variance:
        verdict = Verdict.RUN_VARIANCE
        reason = f"runs differ at a fixed concurrency: {', '.join(run_variance)}"
    elif batch_variance:
        verdict = Verdict.BATCH_VARIANCE
        reason = "each level repeats itself, but differs from concurrency 1 at: " + ", ".join(
            batch_variance
        )
    elif tier == 2 and measurements.plan.logprobs is None:
        verdict = Verdict.LOGPROBS_UNAVAILABLE
        reason = "tier 2 needs logprobs, and none were requested"
    elif tier == 2 and note is not None:
        verdict = Verdict.LOGPROBS_UNAVAILABLE
        reason = f"tier 2 cannot be decided: {note}"
    elif tier == 2 and logprob_variance:
        verdict = Verdict.LOGPROB_VARIANCE
        reason = "tokens equal everywhere; logprobs differ (bit for bit) at: " + ", ".join(
            logprob_variance
        )
    else:
        verdict = Verdict.PASS
        what = "tokens and logprobs (bit for bit)" if tier == 2 else "tokens"
        reason = f"identical {what} across every run, level and order"
        if tier == 1 and logprob_variance:
            reason += f"; logprobs differ at {', '.join(logprob_variance)} (not part of tier 1)"
    return Diagnosis(
        verdict=verdict,
        tier=tier,
        reason=reason,
        levels=tuple(levels),
        divergences=tuple(by_prompt[i] for i in sorted(by_prompt)),
        logprobs_note=note,
    )


def env_changed(tier: Tier, reason: str) -> Diagnosis:
    """The verdict when the server or the environment changed during the check."""
    return Diagnosis(
        verdict=Verdict.ENV_CHANGED, tier=tier, reason=reason, levels=(), divergences=()
    )
