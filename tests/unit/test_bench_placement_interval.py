"""The interval ``benchmarks/bench_placement.py`` puts around the median paired ratio: the sign
test's order statistics, checked against coverage computed by brute force over every sign
pattern (small n) and against the published table (n = 20: x(6) to x(15))."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_placement import median_interval


def _coverage_by_enumeration(n: int, low: int, high: int) -> float:
    """P(x(low) <= median <= x(high)), 1-indexed, over all 2**n equally likely sign patterns:
    the interval holds the median unless fewer than ``low`` values fall below it or fewer than
    ``n - high + 1`` above it."""
    held = 0
    for signs in itertools.product((0, 1), repeat=n):
        below = sum(signs)
        held += below >= low and n - below >= n - high + 1
    return held / 2**n


@pytest.mark.parametrize("n", range(6, 15))
def test_the_interval_has_the_coverage_it_claims_and_no_narrower_one_would(n: int) -> None:
    values = [float(v) for v in range(1, n + 1)]
    low, high, coverage = median_interval(values, 0.95)
    assert low + high == n + 1  # symmetric order statistics
    assert coverage == pytest.approx(_coverage_by_enumeration(n, int(low), int(high)))
    assert coverage >= 0.95
    if low + 1 < high - 1:  # one step narrower would fall short
        assert _coverage_by_enumeration(n, int(low) + 1, int(high) - 1) < 0.95


def test_twenty_values_give_the_tabled_interval() -> None:
    low, high, coverage = median_interval([float(v) for v in range(20, 0, -1)], 0.95)
    assert (low, high) == (6.0, 15.0)
    assert coverage == pytest.approx(0.9586, abs=1e-4)


def test_too_few_values_give_the_whole_range_and_say_its_smaller_coverage() -> None:
    low, high, coverage = median_interval([3.0, 1.0, 2.0], 0.95)
    assert (low, high) == (1.0, 3.0)
    assert coverage == pytest.approx(0.75)
