"""Comparing two samples, or two headers: what differs, where, and whether it is tolerated.

Invariants: two validated values differ exactly when their run-log bytes differ (see
:func:`_differ`), so a comparison never re-serialises a record; every finding names the sample
or field and shows both runs' values, header values in full; a sample counts as a match despite
a difference only when :class:`Thresholds` allow it (logprobs only, within the tolerance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from detserve.errors import UsageError
from detserve.first_difference import first_difference
from detserve.runlog import RunLogHeader, RunLogSample
from detserve.runlog.models import TranscriptHeader

#: tokens shown on each side of the first divergent token
TOKEN_WINDOW: Final = 8
#: characters shown on each side of the first differing character of the texts
TEXT_WINDOW: Final = 64

_SAMPLE_FIELDS: Final = (
    "prompt_token_ids",
    "output_token_ids",
    "text",
    "finish_reason",
    "constraint_satisfied",
    "logprobs",
)


def _differ(a: object, b: object) -> bool:
    """Whether two validated values are written differently in a run log.

    Under RFC 8785 two finite doubles have the same bytes exactly when they are equal (-0.0 and
    0.0 are both ``0``), and the records' types are fixed, so ``!=`` is the byte comparison
    without serialising anything (rfc8785 is pure Python; a log can diverge on every sample).
    """
    return a != b


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
    kind: str
    """The request kind, with its constraint: ``completion``, ``chat``, ``chat, regex``..."""
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
            "kind": self.kind,
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
        parts = [f"sample {self.index} ({self.prompt_id}, {self.kind}):"]
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


def compare_samples(a: RunLogSample, b: RunLogSample, thresholds: Thresholds) -> SampleDivergence:
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
        kind=a.kind if a.constraint is None else f"{a.kind}, {a.constraint}",
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


def header_differences(
    a: RunLogHeader | TranscriptHeader, b: RunLogHeader | TranscriptHeader
) -> list[FieldDifference]:
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
