"""``budget=F`` under Lightning: the callback that books each step's FLOPs and stops the run.

The ledger (what is spent, what the budget buys, the LR progress) is the trainer-independent
:class:`qtune.pruning.budget.ComputeBudget`, shared with the pruning core, which books the
scoring passes into it and plans epochs from it. The spent FLOPs are counted on the host from
each step's token counts: one scalar read per step (and, with several ranks, one all-reduce),
only when a budget is set.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

from qtune.pruning.budget import ComputeBudget
from qtune.pruning.train_step import StepRecord


class BudgetCallback(Callback):
    """Stops the run at the first step after which one more step of the same cost would
    overrun the budget, so it spends the budget to within one step."""

    def __init__(self, budget: ComputeBudget) -> None:
        self.budget = budget

    @property
    def state_key(self) -> str:
        return "ComputeBudget"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.budget.spent_out:  # the epoch's plan (and any scoring pass) is booked by now
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        record = StepRecord.from_outputs(outputs)
        if record is None:
            return
        cost = self.budget.step_cost(record, device=pl_module.device)
        if trainer.world_size > 1:
            cost = trainer.strategy.reduce(cost, reduce_op="sum")
        self.budget.book_step(float(cost))
        if self.budget.exhausted:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.budget.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        return self.budget.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget.load_state_dict(state)


def find_budget(trainer) -> ComputeBudget | None:
    """The run's budget ledger, if a :class:`BudgetCallback` is among the trainer's callbacks."""
    callback = next((c for c in getattr(trainer, "callbacks", ()) if isinstance(c, BudgetCallback)), None)
    return callback.budget if callback is not None else None
