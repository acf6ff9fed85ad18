"""The unbiased pass@k estimator of Chen et al. (2021), "Evaluating Large Language Models
Trained on Code": with n samples of a problem of which c pass, the chance that at least one of k
samples drawn without replacement passes is ``1 - C(n-c, k) / C(n, k)``, computed as the stable
product ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError

__all__ = ["mean_pass_at_k", "parse_ks", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k for one problem with ``n`` samples, ``c`` correct.

    Raises UsageError unless 0 <= c <= n and 1 <= k <= n.
    """
    if not 0 <= c <= n:
        raise UsageError(f"pass@k needs 0 <= correct <= samples, got correct={c}, samples={n}")
    if not 1 <= k <= n:
        raise UsageError(f"pass@{k} needs 1 <= k <= samples (n={n}); draw more samples")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """The mean of :func:`pass_at_k` over problems given as (samples, correct) pairs.

    Raises UsageError when there are no problems, or as :func:`pass_at_k` does.
    """
    if not counts:
        raise UsageError("pass@k needs at least one problem")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def parse_ks(text: str) -> list[int]:
    """``"1,10"`` -> ``[1, 10]`` (sorted, unique). Raises UsageError for anything else."""
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(
            f"--k takes comma-separated whole numbers, e.g. 1,10; got {text!r}"
        ) from None
    if not ks or ks[0] < 1:
        raise UsageError(f"--k takes comma-separated whole numbers >= 1, e.g. 1,10; got {text!r}")
    return ks
