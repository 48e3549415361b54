"""A learning-rate schedule driven by training progress, not by a step count fixed up front.

Pruned epochs have fewer steps, and how many is known only when each epoch's plan is made, so
the schedule reads progress p = (epoch + steps_done_in_epoch / steps_in_epoch) / max_epochs.
A shortened run therefore still warms up and anneals over the steps it actually runs. Under a
compute budget (``budget=F``) progress is the share of the budget spent instead.
"""

from __future__ import annotations

import math


def lr_factor(progress: float, name: str = "cosine", warmup: float = 0.0, min_ratio: float = 0.1) -> float:
    """Multiplier of the base LR at progress in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return max(p / warmup, 1e-3)
    if name == "constant":
        return 1.0
    q = (p - warmup) / max(1.0 - warmup, 1e-12)
    if name == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - q)
    if name == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * q))
    raise ValueError(f"unknown scheduler {name!r} (config key scheduler.name); expected cosine, linear or constant")


def training_progress(epoch: int, batches_done: int, batches_in_epoch, max_epochs: int, budget=None) -> float:
    """Fraction of training done: (epoch + batches done / batches in this epoch) / max_epochs,
    or under a compute budget (a ``ComputeBudget``) the share of the budget spent. Both batch
    counts are micro-batches (with gradient accumulation an optimiser step is several of them):
    their ratio is the epoch's progress whatever the accumulation."""
    if budget is not None:
        return budget.progress
    if not isinstance(batches_in_epoch, (int, float)) or batches_in_epoch in (0, float("inf")):
        batches_in_epoch = 1
    return (epoch + min(batches_done / batches_in_epoch, 1.0)) / max(int(max_epochs or 1), 1)
