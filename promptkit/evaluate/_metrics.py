"""Comparing two templates' runs: McNemar's exact test on the items each got right (paired:
the same items, the same backend)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import UsageError
from ._schema import Comparison, ShotReport

__all__ = ["compare_runs", "mcnemar"]


def mcnemar(first: Sequence[bool], second: Sequence[bool], shots: int = 0) -> Comparison:
    """McNemar's exact (binomial) test on paired per-item correctness."""
    if len(first) != len(second):
        raise UsageError("the two runs must cover the same items")
    only_first = sum(a and not b for a, b in zip(first, second, strict=True))
    only_second = sum(b and not a for a, b in zip(first, second, strict=True))
    n = only_first + only_second
    if n == 0:
        return Comparison(shots=shots, only_first=0, only_second=0, p_value=1.0)
    k = min(only_first, only_second)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return Comparison(
        shots=shots, only_first=only_first, only_second=only_second, p_value=min(1.0, 2 * tail)
    )


def compare_runs(first: Sequence[ShotReport], second: Sequence[ShotReport]) -> list[Comparison]:
    """McNemar's test at each shot count between two templates' reports on the same items.

    Raises UsageError when the two cover different shot counts or different items.
    """
    if [a.shots for a in first] != [b.shots for b in second]:
        raise UsageError("the two runs must cover the same shot counts, in the same order")
    return [mcnemar(a.correct, b.correct, a.shots) for a, b in zip(first, second, strict=True)]
