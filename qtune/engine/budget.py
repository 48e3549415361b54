"""``budget=F``: a run may spend the fraction F of the matching full run's training FLOPs.

The matching full run trains every sample for ``epochs`` epochs: ``epochs`` × (FLOPs per
gradient token) × (the training set's tokens). A budgeted run of any strategy spends that
fraction of it, scoring passes included, and then stops: a strategy that keeps less runs more
epochs over its selections. Its LR schedule is driven by the share of the budget spent, so it
warms up and anneals over exactly the steps the budget buys, whatever the strategy keeps.

How much one epoch costs is known only once it is planned (and, for a batch-level strategy,
once it has run), so the number of epochs is an estimate revised after every epoch from what
the last one cost; the strategies see it as ``max_epochs`` (InfoBatch's and SeTa's annealing
epochs are placed by it). The run stops at the first step after which one more step of the
same cost would overrun the budget, so it spends the budget to within one step.

The spent FLOPs are counted on the host from each step's token counts: one scalar read per
step (and, with several ranks, one all-reduce), only when a budget is set.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

UPPER_EPOCHS = 10_000  # the Trainer's max_epochs under a budget: the budget stops the run


def dataset_tokens(dataset) -> int:
    """Tokens a full epoch forwards: non-padding input positions (one per classified item)."""
    ids = getattr(dataset, "input_ids", None)
    if ids is not None:
        return int(sum(len(x) for x in ids))
    return len(dataset)


class ComputeBudget(Callback):
    """Counts the FLOPs spent (training steps and scoring passes, all ranks), stops the run at
    the budget and tells the LR schedule and the strategy's plans where the run stands."""

    def __init__(self, fraction: float, full_run_flops: float, grad_cost: float,
                 forward_cost: float, epochs: int) -> None:
        self.fraction = float(fraction)
        self.budget_flops = self.fraction * float(full_run_flops)
        self.full_run_flops = float(full_run_flops)
        self.grad_cost, self.forward_cost = float(grad_cost), float(forward_cost)
        self.nominal_epochs = int(epochs)
        self.spent = 0.0
        self.last_step = 0.0
        self.epoch_costs: list[float] = []  # FLOPs of each finished epoch (scoring included)
        self._epoch_start = 0.0
        self._scoring_seen = 0.0

    @property
    def state_key(self) -> str:
        return "ComputeBudget"

    @property
    def progress(self) -> float:
        """Share of the budget spent: the LR schedule's progress under a budget."""
        return min(self.spent / self.budget_flops, 1.0) if self.budget_flops > 0 else 1.0

    @property
    def exhausted(self) -> bool:
        """True when one more step of the last step's cost would overrun the budget."""
        return self.spent + self.last_step > self.budget_flops

    @staticmethod
    def state_exhausted(state: dict[str, Any]) -> bool:
        """``exhausted`` of the budget a checkpoint's ``state_dict`` describes."""
        return (float(state["spent"]) + float(state["last_step"])
                > float(state["fraction"]) * float(state["full_run_flops"]))

    def planned_epochs(self, epoch: int) -> int:
        """The epochs the budget buys, as far as the epochs so far tell: before the first has
        run, the full run's count scaled by the budget (at least 1); afterwards, the epochs
        done plus what the rest of the budget buys at the last epoch's cost."""
        if not self.epoch_costs or self.epoch_costs[-1] <= 0:
            return max(1, math.ceil(self.nominal_epochs * self.fraction))
        left = max(self.budget_flops - self.spent, 0.0)
        return max(epoch + 1, epoch + math.ceil(left / self.epoch_costs[-1] - 1e-9))

    # -- counting -------------------------------------------------------------------------
    def _pruning(self, trainer):
        from qtune.engine.callback import PruningCallback

        return next((c for c in trainer.callbacks if isinstance(c, PruningCallback)), None)

    def _take_scoring(self, trainer) -> None:
        """Scoring passes of the pruning callback since the last look (already all ranks;
        a batch plan's scoring forward is counted per step instead)."""
        pruning = self._pruning(trainer)
        if pruning is None:
            return
        tokens = float(pruning.totals.get("scoring_pass_tokens", 0.0))
        self.spent += self.forward_cost * (tokens - self._scoring_seen)
        self._scoring_seen = tokens

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._take_scoring(trainer)  # the epoch's plan (and any scoring pass) is made by now
        if self.spent >= self.budget_flops:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(outputs, dict):
            return
        cost = torch.zeros((), dtype=torch.float64, device=pl_module.device)
        for key, per_token in (("forward_tokens", self.grad_cost), ("scoring_tokens", self.forward_cost)):
            if key in outputs:
                cost = cost + per_token * torch.as_tensor(outputs[key]).double()
        if trainer.world_size > 1:
            cost = trainer.strategy.reduce(cost, reduce_op="sum")
        self.last_step = float(cost)
        self.spent += self.last_step
        if self.exhausted:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._take_scoring(trainer)
        self.epoch_costs.append(self.spent - self._epoch_start)
        self._epoch_start = self.spent

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "spent": self.spent, "last_step": self.last_step,
                "epoch_costs": list(self.epoch_costs), "epoch_start": self._epoch_start,
                "scoring_seen": self._scoring_seen, "full_run_flops": self.full_run_flops}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if float(state["fraction"]) != self.fraction:
            raise ValueError(f"this checkpoint was written with budget={state['fraction']}; this "
                             f"run asks for budget={self.fraction} (config key budget). Resume "
                             "with the same budget, or start a new run")
        self.spent, self.last_step = float(state["spent"]), float(state["last_step"])
        self.epoch_costs = [float(c) for c in state["epoch_costs"]]
        self._epoch_start = float(state["epoch_start"])
        self._scoring_seen = float(state["scoring_seen"])


def build_budget(fraction: float, epochs: int, strategy, dataset, batch_size: int,
                 num_params: int, trainable_params: int | None = None) -> ComputeBudget:
    """The budget callback of a run, after checking that the budget buys at least one step
    and, past the strategy's mandatory warm-up (``warmup_cost``), one step of pruning."""
    from qtune.summary import token_costs

    grad, forward = token_costs(num_params, trainable_params)
    tokens = dataset_tokens(dataset)
    epoch_flops = grad * tokens
    full = epochs * epoch_flops
    step = grad * tokens / max(len(dataset), 1) * min(batch_size, len(dataset))
    warm = strategy.warmup_cost()
    warm_flops = warm["epochs"] * epoch_flops + warm["scoring_passes"] * forward * tokens
    minimum = (warm_flops + step) / full
    if fraction < minimum:
        why = (f"strategy {strategy.name!r} first runs {warm['epochs']} epoch(s) on all data and "
               f"{warm['scoring_passes']} scoring pass(es)" if warm_flops else "one training step")
        raise ValueError(f"budget={fraction} is below what this run needs ({why}, then one step: "
                         f"{minimum:.4g} of the {epochs}-epoch full run); set budget>={minimum:.4g}, "
                         "or more epochs")
    return ComputeBudget(fraction, full, grad, forward, epochs)


def full_run_flops(epochs: int, dataset, num_params: int,
                   trainable_params: int | None = None) -> float:
    """Training FLOPs of the matching full run (same model and adapter): every sample,
    ``epochs`` times, no scoring."""
    from qtune.summary import token_costs

    return epochs * token_costs(num_params, trainable_params)[0] * dataset_tokens(dataset)


def find_budget(trainer) -> ComputeBudget | None:
    if trainer is None:
        return None
    return next((c for c in getattr(trainer, "callbacks", ()) if isinstance(c, ComputeBudget)), None)
