"""The server's own account of its batches: vLLM's Prometheus counters (``GET /metrics``).

``vllm:iteration_tokens_total`` is a histogram of the tokens each engine step processed; its
``_count`` is the number of steps and its ``_sum`` the tokens. Read before and after a pass, the
two differences say how many tokens one step carried on average: about 1 (plus prefill) when one
request is in flight, about N when N decode together. That is how ``detserve check`` shows that
batches really formed, from the server rather than from the client's intentions.

Reading metrics is best effort: a server without the endpoint or the counters gives ``None``,
and the check says so rather than guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (?P<value>\S+)$", re.M)
STEPS = "vllm:iteration_tokens_total_count"
STEP_TOKENS = "vllm:iteration_tokens_total_sum"
GENERATED = "vllm:generation_tokens_total"


@dataclass(frozen=True)
class EngineCounters:
    """Cumulative counters of the engine at one instant."""

    steps: float
    step_tokens: float
    generated_tokens: float | None

    def tokens_per_step_since(self, before: EngineCounters) -> float | None:
        steps = self.steps - before.steps
        return round((self.step_tokens - before.step_tokens) / steps, 2) if steps > 0 else None


def parse_counters(text: str) -> EngineCounters | None:
    """The counters in a Prometheus text page, summed over engines; None when absent."""
    totals: dict[str, float] = {}
    for match in _SAMPLE.finditer(text):
        name = match["name"]
        if name in (STEPS, STEP_TOKENS, GENERATED):
            try:
                totals[name] = totals.get(name, 0.0) + float(match["value"])
            except ValueError:
                return None
    if STEPS not in totals or STEP_TOKENS not in totals:
        return None
    return EngineCounters(totals[STEPS], totals[STEP_TOKENS], totals.get(GENERATED))


def read_counters(base_url: str, *, timeout_s: float = 5.0) -> EngineCounters | None:
    """The server's counters now, or None when it does not publish them."""
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/metrics", timeout=timeout_s, trust_env=False)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return parse_counters(response.text)
