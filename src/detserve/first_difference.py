"""Where two sequences first differ: shared by the runtime (smoke) and evaluation.

It lives below both so that neither imports the other (evaluation depends on run logs; the
runtime depends on neither).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def first_difference(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    """The first index where ``a`` and ``b`` differ, or where the shorter one ends."""
    if a == b:
        return None
    # Bisect on equal prefixes: slices compare in C, so a 4-million-character text costs
    # milliseconds, not seconds.
    low, high = 0, min(len(a), len(b))  # a[:low] == b[:low]; the answer is at most high
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
