"""Memory before training: an estimate of what a batch needs, and what the machine has free.

A process that runs out of memory is killed by the kernel, with no error to catch, so a batch
that would not fit is refused before the first step, with the numbers and a batch size that
fits. The model is already loaded when the check runs, so its weights are no longer in what is
available; the estimate counts what training adds: float32 gradients, AdamW's two moments and
the kept copy of the best epoch's weights, for the trained parameters, and the activations
kept for the backward pass (per layer and token about 34 widths and 5 attention scores per
head, Korthikanti et al. 2022, in 4-byte floats), plus the logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError

__all__ = ["MemoryEstimate", "available_memory", "check_fits_memory", "estimate_memory"]

FLOAT = 4  # bytes per float32
HEADROOM = 0.9  # share of the available memory a run may plan to use
_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes training adds to a loaded model: fixed (optimizer state and the like) plus a
    share per sequence of the batch."""

    fixed: int  # gradients, AdamW's two moments and the best epoch's copy of trained weights
    per_sequence: int  # activations and logits of one sequence of the longest length

    def total(self, batch_size: int) -> int:
        return self.fixed + batch_size * self.per_sequence


def estimate_memory(
    *,
    trainable: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    vocab_size: int,
    tokens: int,
) -> MemoryEstimate:
    """The estimate for a model of this shape training ``trainable`` of its parameters on
    sequences of ``tokens`` tokens."""
    fixed = FLOAT * 4 * trainable  # gradients, two AdamW moments, the best epoch's copy
    per_layer = FLOAT * (34 * tokens * n_embd + 5 * n_head * tokens * tokens) // 2
    logits = FLOAT * 3 * tokens * vocab_size  # logits, their float copy, their gradient
    return MemoryEstimate(fixed=fixed, per_sequence=n_layer * per_layer + logits)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes this process can still allocate: the kernel's MemAvailable (else the free physical
    pages), lowered to what a cgroup memory limit leaves; None when the system does not say."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, UnicodeDecodeError):
        available = None
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),  # cgroup v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),  # cgroup v1
    ):
        limit, used = _read_int(_CGROUP / limit_file), _read_int(_CGROUP / usage_file)
        if limit is not None and used is not None:
            available = min(available, max(0, limit - used))
            break
    return available


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def check_fits_memory(estimate: MemoryEstimate, batch_size: int, available: int | None) -> None:
    """Refuse a batch whose estimate exceeds the usable share of ``available`` bytes (nothing
    is checked when it is None).

    Raises ConfigurationError with the estimate, the memory available and the largest batch
    size that fits (or, when none does, that the model itself does not fit).
    """
    if available is None:
        return
    usable = int(available * HEADROOM)
    needed = estimate.total(batch_size)
    if needed <= usable:
        return
    fits = (usable - estimate.fixed) // estimate.per_sequence if usable > estimate.fixed else 0
    advice = (
        f"try --batch-size {fits}"
        if fits >= 1
        else "not even one sequence fits: use LoRA (--lora-rank), a smaller model, or shorter "
        "examples"
    )
    raise ConfigurationError(
        f"training would need about {_size(needed)} more memory (optimizer state "
        f"{_size(estimate.fixed)} + batch size {batch_size} x {_size(estimate.per_sequence)} "
        f"per sequence) but only {_size(available)} is available ({HEADROOM:.0%} of it usable); "
        f"{advice}"
    )
