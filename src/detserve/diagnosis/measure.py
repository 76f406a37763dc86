"""The measurement of a check: every pass (concurrency x run x order) and what each request got.

A pass sends the same first ``n_prompts`` prompts with ``concurrency`` requests truly in flight
(:func:`detserve.inflight.run_in_flight`). At each level the bundle's order is sampled ``runs``
times (run variance), and each level above 1 once more in a seeded shuffled order, so that each
prompt lands beside other neighbours (batch variance). Concurrency 1 always comes first: its
first run is the baseline everything is compared with.

Invariants: the observations of a pass are kept by prompt index, not by completion time, so
:meth:`Measurements.trace_records` (``trace.jsonl``) is the same bytes for the same outputs;
what depends on timing (seconds, overlap, the server's tokens per step) is kept apart in
:class:`PassTiming`, the volatile part of a report.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from detserve.inflight import Timed, max_overlap, run_in_flight
from detserve.request_kinds import PromptRecord
from detserve.runtime.metrics import EngineCounters
from detserve.runtime.vllm_client import Completion

Order = Literal["bundle", "shuffled"]
Tier = Literal[0, 1, 2]


@dataclass(frozen=True)
class CheckPlan:
    """What a check measures."""

    tier: Tier
    runs: int
    levels: tuple[int, ...]
    n_prompts: int
    max_tokens: int
    logprobs: int | None
    shuffle: bool = True
    shuffle_seed: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "tier": self.tier,
            "runs": self.runs,
            "concurrency_levels": list(self.levels),
            "n_prompts": self.n_prompts,
            "max_tokens": self.max_tokens,
            "logprobs": self.logprobs,
            "shuffle": self.shuffle,
            "shuffle_seed": self.shuffle_seed,
        }


def levels_with_baseline(levels: Sequence[int]) -> tuple[int, ...]:
    """Distinct levels ascending, 1 added: concurrency 1 is the baseline of every comparison."""
    return tuple(sorted({1, *levels}))


@dataclass(frozen=True, order=True)
class PassKey:
    """One pass: how many in flight, which run (from 1), in which order."""

    concurrency: int
    run: int
    order: Order

    def label(self) -> str:
        return f"c{self.concurrency}/run{self.run}" + (
            "/shuffled" if self.order == "shuffled" else ""
        )


@dataclass(frozen=True)
class Observation:
    """What one request returned, and where it stood in its pass."""

    key: PassKey
    position: int
    prompt_index: int
    prompt_id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    logprobs: tuple[float | None, ...] | None

    def trace_record(self) -> dict[str, object]:
        return {
            "concurrency": self.key.concurrency,
            "run": self.key.run,
            "order": self.key.order,
            "position": self.position,
            "prompt_index": self.prompt_index,
            "prompt_id": self.prompt_id,
            "output_token_ids": list(self.token_ids),
            "text": self.text,
            "finish_reason": self.finish_reason,
            "logprobs": None if self.logprobs is None else list(self.logprobs),
        }


@dataclass(frozen=True)
class PassTiming:
    """How a pass ran: volatile, never part of a verdict."""

    key: PassKey
    seconds: float
    output_tokens: int
    max_in_flight: int
    server_tokens_per_step: float | None

    def as_json(self) -> dict[str, object]:
        return {
            "pass": self.key.label(),
            "concurrency": self.key.concurrency,
            "run": self.key.run,
            "order": self.key.order,
            "seconds": round(self.seconds, 3),
            "output_tokens": self.output_tokens,
            "tokens_per_s": round(self.output_tokens / self.seconds, 1) if self.seconds else None,
            "max_in_flight": self.max_in_flight,
            "server_tokens_per_step": self.server_tokens_per_step,
        }


@dataclass(frozen=True)
class Measurements:
    """Every pass of a check, by pass then prompt index."""

    plan: CheckPlan
    prompt_ids: tuple[str, ...]
    passes: dict[PassKey, tuple[Observation, ...]]
    timings: tuple[PassTiming, ...]

    @property
    def baseline(self) -> tuple[Observation, ...]:
        return self.passes[PassKey(1, 1, "bundle")]

    def trace_records(self) -> list[dict[str, object]]:
        return [obs.trace_record() for key in self.passes for obs in self.passes[key]]


def pass_orders(plan: CheckPlan) -> list[tuple[PassKey, tuple[int, ...]]]:
    """Each pass and the order its prompts are sent in; the baseline first."""
    bundle_order = tuple(range(plan.n_prompts))
    passes: list[tuple[PassKey, tuple[int, ...]]] = []
    for level in plan.levels:
        passes += [(PassKey(level, run, "bundle"), bundle_order) for run in range(1, plan.runs + 1)]
        if plan.shuffle and level > 1:
            shuffled = list(bundle_order)
            # Reproducible neighbours, not secrecy.
            random.Random(f"detserve-check:{plan.shuffle_seed}:{level}").shuffle(shuffled)  # noqa: S311
            passes.append((PassKey(level, 1, "shuffled"), tuple(shuffled)))
    return passes


#: one strict request for a prompt (its prompt-token check included)
Complete = Callable[[PromptRecord], Completion]


def measure(
    prompts: Sequence[PromptRecord],
    plan: CheckPlan,
    complete: Complete,
    *,
    counters: Callable[[], EngineCounters | None] = lambda: None,
    between: Callable[[], None] | None = None,
    on_pass: Callable[[PassKey], None] | None = None,
) -> Measurements:
    """Run every pass of ``plan`` over ``prompts``; raise on the first failed request."""
    passes: dict[PassKey, tuple[Observation, ...]] = {}
    timings: list[PassTiming] = []
    for key, order in pass_orders(plan):
        if on_pass is not None:
            on_pass(key)
        before = counters()

        def call(position: int, index: int) -> Completion:
            return complete(prompts[index])

        results: list[Timed[Completion]] = run_in_flight(
            order,
            call,
            concurrency=key.concurrency,
            on_result=lambda _timed: between() if between is not None else None,
            between=between,
        )
        after = counters()
        observations = sorted(
            (
                Observation(
                    key=key,
                    position=timed.index,
                    prompt_index=order[timed.index],
                    prompt_id=prompts[order[timed.index]].id,
                    token_ids=timed.result.token_ids,
                    text=timed.result.text,
                    finish_reason=timed.result.finish_reason or "unknown",
                    logprobs=(
                        None
                        if timed.result.logprobs is None
                        else tuple(token.logprob for token in timed.result.logprobs)
                    ),
                )
                for timed in results
            ),
            key=lambda obs: obs.prompt_index,
        )
        passes[key] = tuple(observations)
        seconds = max(t.finished for t in results) - min(t.started for t in results)
        timings.append(
            PassTiming(
                key=key,
                seconds=seconds,
                output_tokens=sum(len(obs.token_ids) for obs in observations),
                max_in_flight=max_overlap([(t.started, t.finished) for t in results]),
                server_tokens_per_step=(
                    after.tokens_per_step_since(before)
                    if before is not None and after is not None
                    else None
                ),
            )
        )
    return Measurements(
        plan=plan,
        prompt_ids=tuple(p.id for p in prompts),
        passes=passes,
        timings=tuple(timings),
    )
