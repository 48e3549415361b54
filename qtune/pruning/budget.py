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

This module is the ledger, trainer-independent: the pruning core books scoring passes into it and
plans epochs from it; each trainer integration books its steps and stops its trainer when
``exhausted`` (``qtune.lightning.budget`` for Lightning, the Hugging Face mixin for Trainer).
"""

from __future__ import annotations

import math
from typing import Any

import torch

UPPER_EPOCHS = 10_000  # the trainer's max_epochs under a budget: the budget stops the run


def dataset_tokens(dataset, read_items: bool = False) -> int:
    """Tokens a full epoch forwards: non-padding input positions (one per classified item).
    Reads qtune's datasets' ``input_ids``, a ``datasets.Dataset``'s columns, a wrapper's
    ``dataset``; with `read_items`, else every item's ``attention_mask`` (or ``input_ids``)
    once (a user's map-style dataset); otherwise one token per item."""
    ids = getattr(dataset, "input_ids", None)
    if ids is not None:
        return int(sum(len(x) for x in ids))
    columns = getattr(dataset, "column_names", None)
    if columns is not None and "input_ids" in columns:
        if "attention_mask" in columns:
            return int(sum(sum(m) for m in dataset["attention_mask"]))
        return int(sum(len(x) for x in dataset["input_ids"]))
    inner = getattr(dataset, "dataset", None)
    if inner is not None and len(inner) == len(dataset):
        return dataset_tokens(inner, read_items)
    first = dataset[0] if read_items and len(dataset) else None
    if isinstance(first, dict) and "attention_mask" in first:
        return int(sum(int(torch.as_tensor(dataset[i]["attention_mask"]).sum()) for i in range(len(dataset))))
    if isinstance(first, dict) and "input_ids" in first:
        return int(sum(len(dataset[i]["input_ids"]) for i in range(len(dataset))))
    return len(dataset)


class ComputeBudget:
    """The FLOPs spent (training steps and scoring passes, all ranks) against the budget; where
    the run stands for the LR schedule and the strategy's plans."""

    def __init__(
        self, fraction: float, full_run_flops: float, grad_cost: float, forward_cost: float, epochs: int
    ) -> None:
        self.fraction = float(fraction)
        self.budget_flops = self.fraction * float(full_run_flops)
        self.full_run_flops = float(full_run_flops)
        self.grad_cost, self.forward_cost = float(grad_cost), float(forward_cost)
        self.nominal_epochs = int(epochs)
        self.spent = 0.0
        self.last_step = 0.0
        self.epoch_costs: list[float] = []  # FLOPs of each finished epoch (scoring included)
        self._epoch_start = 0.0

    @property
    def progress(self) -> float:
        """Share of the budget spent: the LR schedule's progress under a budget."""
        return min(self.spent / self.budget_flops, 1.0) if self.budget_flops > 0 else 1.0

    @property
    def exhausted(self) -> bool:
        """True when one more step of the last step's cost would overrun the budget."""
        return self.spent + self.last_step > self.budget_flops

    @property
    def spent_out(self) -> bool:
        """Nothing left: not even the next epoch's first step may start."""
        return self.spent >= self.budget_flops

    @staticmethod
    def state_exhausted(state: dict[str, Any]) -> bool:
        """``exhausted`` of the budget a checkpoint's ``state_dict`` describes."""
        return float(state["spent"]) + float(state["last_step"]) > float(state["fraction"]) * float(
            state["full_run_flops"]
        )

    def planned_epochs(self, epoch: int) -> int:
        """The epochs the budget buys, as far as the epochs so far tell: before the first has
        run, the full run's count scaled by the budget (at least 1); afterwards, the epochs
        done plus what the rest of the budget buys at the last epoch's cost."""
        if not self.epoch_costs or self.epoch_costs[-1] <= 0:
            return max(1, math.ceil(self.nominal_epochs * self.fraction))
        left = max(self.budget_flops - self.spent, 0.0)
        return max(epoch + 1, epoch + math.ceil(left / self.epoch_costs[-1] - 1e-9))

    # -- booking ---------------------------------------------------------------------------
    def step_cost(self, record, device=None) -> torch.Tensor:
        """This rank's FLOPs of one step (a ``StepRecord``), from its token counts
        (``forward_tokens`` trained with gradients, ``scoring_tokens`` forwarded without), as a
        float64 tensor on `device`."""
        cost = torch.zeros((), dtype=torch.float64, device=device)
        for tokens, per_token in ((record.forward_tokens, self.grad_cost), (record.scoring_tokens, self.forward_cost)):
            if tokens is not None:
                cost = cost + per_token * torch.as_tensor(tokens).to(cost.device).double()
        return cost

    def book_step(self, flops: float) -> None:
        """One step of every rank together (the integration sums the ranks' ``step_cost``)."""
        self.last_step = float(flops)
        self.spent += self.last_step

    def book_prepaid(self, flops: float) -> None:
        """FLOPs spent before training (a token rule's reference losses computed into a file),
        counted before the first epoch and outside every epoch's cost."""
        self.spent += float(flops)
        self._epoch_start = self.spent

    def book_scoring_pass(self, tokens: float) -> None:
        """A no-grad pass over `tokens` tokens (all ranks): the core books it when it runs."""
        self.spent += self.forward_cost * float(tokens)

    def end_epoch(self) -> None:
        self.epoch_costs.append(self.spent - self._epoch_start)
        self._epoch_start = self.spent

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "fraction": self.fraction,
            "spent": self.spent,
            "last_step": self.last_step,
            "epoch_costs": list(self.epoch_costs),
            "epoch_start": self._epoch_start,
            "full_run_flops": self.full_run_flops,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if float(state["fraction"]) != self.fraction:
            raise ValueError(
                f"this checkpoint was written with budget={state['fraction']}; this "
                f"run asks for budget={self.fraction} (config key budget). Resume "
                "with the same budget, or start a new run"
            )
        self.spent, self.last_step = float(state["spent"]), float(state["last_step"])
        self.epoch_costs = [float(c) for c in state["epoch_costs"]]
        self._epoch_start = float(state["epoch_start"])


def build_budget(
    fraction: float,
    epochs: int,
    strategy,
    dataset,
    batch_size: int,
    num_params: int,
    trainable_params: int | None = None,
    read_items: bool = False,
    prepaid_flops: float = 0.0,
) -> ComputeBudget:
    """The budget ledger of a run, after checking that the budget buys at least one step
    and, past the strategy's mandatory warm-up (``warmup_cost``) and what was spent before
    training (``prepaid_flops``: a reference's loss file), one step of pruning."""
    from qtune.runs.flops import token_costs

    grad, forward = token_costs(num_params, trainable_params)
    tokens = dataset_tokens(dataset, read_items)
    epoch_flops = grad * tokens
    full = epochs * epoch_flops
    step = grad * tokens / max(len(dataset), 1) * min(batch_size, len(dataset))
    warm = strategy.warmup_cost()
    warm_flops = warm["epochs"] * epoch_flops + warm["scoring_passes"] * forward * tokens
    minimum = (warm_flops + float(prepaid_flops) + step) / full
    if fraction < minimum:
        why = (
            f"strategy {strategy.name!r} first runs {warm['epochs']} epoch(s) on all data and "
            f"{warm['scoring_passes']} scoring pass(es)"
            if warm_flops
            else "one training step"
        )
        if prepaid_flops:
            why += f", after the reference's loss file ({prepaid_flops:.4g} FLOPs)"
        raise ValueError(
            f"budget={fraction} is below what this run needs ({why}, then one step: "
            f"{minimum:.4g} of the {epochs}-epoch full run); set budget>={minimum:.4g}, "
            "or more epochs"
        )
    budget = ComputeBudget(fraction, full, grad, forward, epochs)
    if prepaid_flops:
        budget.book_prepaid(prepaid_flops)
    return budget


def full_run_flops(epochs: int, dataset, num_params: int, trainable_params: int | None = None) -> float:
    """Training FLOPs of the matching full run (same model and adapter): every sample,
    ``epochs`` times, no scoring."""
    from qtune.runs.flops import token_costs

    return epochs * token_costs(num_params, trainable_params)[0] * dataset_tokens(dataset)
