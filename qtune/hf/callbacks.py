"""The mixin's Trainer callbacks: each forwards one Trainer event to the mixin's pruning core."""

from __future__ import annotations

import torch
from transformers import TrainerCallback


class BookEpochs(TrainerCallback):
    """Ends the core's epoch when Trainer ends one (``owner``: the PruningMixin trainer)."""

    def __init__(self, owner) -> None:
        self.owner = owner

    def on_epoch_end(self, args, state, control, **kwargs):
        self.owner._finish_epoch()


class BookBudgetSteps(TrainerCallback):
    """Books each optimiser step's FLOPs before the LR scheduler reads the progress, and stops
    training when one more step of the same cost would overrun the budget."""

    def __init__(self, owner) -> None:
        self.owner = owner

    def on_optimizer_step(self, args, state, control, **kwargs):
        budget, comm = self.owner.pruning_budget, self.owner._pruning_core.comm
        flops = torch.as_tensor(self.owner._step_flops, dtype=torch.float64)
        budget.book_step(comm.sum({"flops": flops})["flops"])  # every rank's step: one all-reduce
        self.owner._step_flops = 0.0
        if budget.exhausted:
            control.should_training_stop = True
        return control
