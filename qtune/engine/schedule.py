"""A learning-rate schedule driven by training progress, not by a step count fixed up front.

Pruned epochs have fewer steps, and how many is known only when each epoch's plan is made, so
the schedule reads progress p = (epoch + steps_done_in_epoch / steps_in_epoch) / max_epochs.
A shortened run therefore still warms up and anneals over the steps it actually runs. Under a
compute budget (``budget=F``) progress is the share of the budget spent instead.
"""

from __future__ import annotations

import math


def lr_factor(progress: float, name: str = "cosine", warmup: float = 0.0,
              min_ratio: float = 0.1) -> float:
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
    raise ValueError(f"unknown scheduler {name!r} (config key scheduler.name); "
                     "expected cosine, linear or constant")


def training_progress(trainer, steps_done_in_epoch: int) -> float:
    """Fraction of training done, from the trainer's epoch and this epoch's loader length."""
    if trainer is None:
        return 0.0
    from qtune.engine.budget import find_budget

    budget = find_budget(trainer)
    if budget is not None:  # budget=F: the share of the FLOPs budget spent
        return budget.progress
    max_epochs = max(int(trainer.max_epochs or 1), 1)
    per_epoch = trainer.num_training_batches
    if not isinstance(per_epoch, (int, float)) or per_epoch in (0, float("inf")):
        per_epoch = 1
    # steps_done_in_epoch and num_training_batches both count micro-batches (with gradient
    # accumulation an optimiser step is several of them): their ratio is the epoch's progress
    return (trainer.current_epoch + min(steps_done_in_epoch / per_epoch, 1.0)) / max_epochs
