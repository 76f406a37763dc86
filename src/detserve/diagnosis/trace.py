"""A check's trace (``trace.jsonl``): every request it sent and what came back; one writer, one
reader.

Line 1 is the header: the run pins the check ran under, the seed and the check's plan (tier,
runs, levels, prompts, ``max_tokens``, ``logprobs``, shuffling). Then one line a request, by
pass (the order of :func:`~detserve.diagnosis.measure.pass_orders`: the baseline first) then by
prompt index: the pass (concurrency, run, order), the request's position in the pass, the
prompt, its tokens, text, finish reason and logprobs. Every line is canonical JSON (RFC 8785),
so the same outputs give the same bytes and a certificate can name them by their sha256.

:func:`parse_trace` reads it back strictly (each line canonical and of its model, exactly the
passes the header's plan makes, each prompt at the position its order puts it, no more tokens
than ``max_tokens``) into :class:`~detserve.diagnosis.measure.Measurements`, from which the
verdict is computed again (:mod:`detserve.certificate` does). What a trace cannot show is
that the server stayed the same during the check (``ENV_CHANGED``): that is the checker's word.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Final, Literal, TypeVar

from pydantic import Field, ValidationError

from detserve.canonical import MAX_EXACT_INTEGER, canonical_bytes
from detserve.diagnosis.measure import (
    CheckPlan,
    Measurements,
    Observation,
    PassKey,
    pass_orders,
)
from detserve.errors import CanonicalJSONError, InputError, bounded
from detserve.runlog import RunPins
from detserve.strict_model import StrictModel

#: the trace's file name in a repro pack, and what a certificate names
TRACE_FILE: Final = "trace.jsonl"
TRACE_FORMAT: Final = "detserve-check-trace"
TRACE_FORMAT_VERSION: Final = 1

Count = Annotated[int, Field(ge=0, le=MAX_EXACT_INTEGER)]


class TraceError(InputError):
    """A trace that is not one, or not of the check its header describes."""

    kind = "invalid-trace"


class TracePlan(StrictModel):
    """The check's plan, as :meth:`CheckPlan.as_json` writes it."""

    tier: Literal[0, 1, 2]
    runs: Annotated[int, Field(ge=1, le=1024)]
    concurrency_levels: Annotated[
        tuple[Annotated[int, Field(ge=1, le=4096)], ...], Field(min_length=1)
    ]
    n_prompts: Annotated[int, Field(ge=1, le=MAX_EXACT_INTEGER)]
    max_tokens: Annotated[int, Field(ge=1, le=1 << 20)]
    logprobs: Annotated[int, Field(ge=0, le=1024)] | None
    shuffle: bool
    shuffle_seed: Count

    def check_plan(self) -> CheckPlan:
        return CheckPlan(
            tier=self.tier,
            runs=self.runs,
            levels=self.concurrency_levels,
            n_prompts=self.n_prompts,
            max_tokens=self.max_tokens,
            logprobs=self.logprobs,
            shuffle=self.shuffle,
            shuffle_seed=self.shuffle_seed,
        )


class TraceHeader(StrictModel):
    """Line 1 of a trace."""

    format: Literal["detserve-check-trace"]
    format_version: Literal[1]
    pins: RunPins
    """The pins the check ran under."""
    seed: Count
    check: TracePlan


class TraceRecord(StrictModel):
    """One request of a pass, as :meth:`Observation.trace_record` writes it."""

    concurrency: Annotated[int, Field(ge=1, le=4096)]
    run: Annotated[int, Field(ge=1, le=1024)]
    order: Literal["bundle", "shuffled"]
    position: Count
    prompt_index: Count
    prompt_id: Annotated[str, Field(min_length=1, max_length=256)]
    output_token_ids: tuple[Count, ...]
    text: str
    finish_reason: Annotated[str, Field(max_length=64)]
    logprobs: tuple[float | None, ...] | None


def trace_bytes(
    pins: RunPins, seed: int, plan: CheckPlan, measurements: Measurements | None
) -> bytes:
    """The trace of a check: its header, then every request (none when nothing was measured)."""
    header = {
        "format": TRACE_FORMAT,
        "format_version": TRACE_FORMAT_VERSION,
        "pins": pins.model_dump(mode="json"),
        "seed": seed,
        "check": plan.as_json(),
    }
    records = measurements.trace_records() if measurements is not None else []
    return b"".join(canonical_bytes(line) for line in (header, *records))


_Line = TypeVar("_Line", TraceHeader, TraceRecord)


@dataclass(frozen=True)
class CheckTrace:
    """A trace read back: its header and the measurements it holds."""

    header: TraceHeader
    measurements: Measurements


def _line(data: bytes, number: int, model: type[_Line], source: str) -> _Line:
    where = f"{bounded(source)}: line {number}"
    try:
        value = json.loads(data)
        parsed = model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "(line)"
        raise TraceError(f"{where}: {field}: {bounded(first['msg'], 300)}") from None
    except (ValueError, RecursionError):
        raise TraceError(f"{where}: not JSON") from None
    try:
        canonical = canonical_bytes(value) == data + b"\n"
    except CanonicalJSONError:
        canonical = False
    if not canonical:
        raise TraceError(f"{where}: not canonical JSON (RFC 8785)")
    return parsed


def parse_trace(data: bytes, source: str) -> CheckTrace:
    """The trace in ``data``, checked against its own header's plan; :class:`TraceError`
    naming the first line that is not what the plan makes."""
    if not data.endswith(b"\n"):
        raise TraceError(f"{bounded(source)}: empty, or no final newline (truncated?)")
    lines = data[:-1].split(b"\n")
    header = _line(lines[0], 1, TraceHeader, source)
    plan = header.check.check_plan()
    n = plan.n_prompts
    expected = pass_orders(plan)
    if len(lines) - 1 != len(expected) * n:
        raise TraceError(
            f"{bounded(source)}: {len(lines) - 1} requests; the header's plan makes "
            f"{len(expected)} passes of {n} prompts ({len(expected) * n})"
        )
    passes: dict[PassKey, tuple[Observation, ...]] = {}
    prompt_ids: list[str] = []
    number = 1
    for key, order in expected:
        observations = []
        for index in range(n):
            number += 1
            record = _line(lines[number - 1], number, TraceRecord, source)
            where = f"{bounded(source)}: line {number}"
            seen = PassKey(record.concurrency, record.run, record.order)
            if seen != key or record.prompt_index != index:
                raise TraceError(
                    f"{where}: {seen.label()} prompt {record.prompt_index}; the plan puts "
                    f"{key.label()} prompt {index} here"
                )
            if record.position >= n or order[record.position] != index:
                raise TraceError(f"{where}: position {record.position} is not prompt {index}'s")
            if len(prompt_ids) < n:
                prompt_ids.append(record.prompt_id)
            elif prompt_ids[index] != record.prompt_id:
                raise TraceError(f"{where}: prompt {index} is another prompt than in the baseline")
            if len(record.output_token_ids) > plan.max_tokens:
                raise TraceError(
                    f"{where}: {len(record.output_token_ids)} tokens, more than max_tokens "
                    f"{plan.max_tokens}"
                )
            observations.append(
                Observation(
                    key=key,
                    position=record.position,
                    prompt_index=index,
                    prompt_id=record.prompt_id,
                    token_ids=record.output_token_ids,
                    text=record.text,
                    finish_reason=record.finish_reason,
                    logprobs=record.logprobs,
                )
            )
        passes[key] = tuple(observations)
    measurements = Measurements(plan=plan, prompt_ids=tuple(prompt_ids), passes=passes, timings=())
    return CheckTrace(header=header, measurements=measurements)
