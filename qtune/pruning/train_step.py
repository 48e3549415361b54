"""One training step for every trainer, and the typed record of what it trained and cost.

Both adapters call :func:`train_step`: the Lightning module in ``training_step``, the Hugging
Face mixin in ``compute_loss``. The plan's per-sample loss weights reach the loss one way, as
``batch["sample_weight"]`` (the Lightning loader's collate adds them; the mixin puts them on the
batch from the core). A strategy with a batch plan (Q-Tuning) scores the batch and trains what
it keeps (:func:`qtune.pruning.planned_step.planned_step`); any other trains the whole batch.
A packed batch (``seg``: several samples per row) takes :mod:`qtune.pruning.packed_step`.
The :class:`StepRecord` goes to ``PruningCore.record_batch`` and to the compute budget.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from qtune.pruning.batch_stats import sample_scores
from qtune.pruning.loss import masked_token_mean
from qtune.pruning.packed_step import is_packed, packed_train_step
from qtune.pruning.planned_step import forward_tokens, planned_record, planned_step, wrong_tokens_trained
from qtune.pruning.token_step import needs_step_extras, rule_inputs


@dataclass
class StepRecord:
    """Tensors stay on the device: the core reads them on the host once per epoch."""

    loss: torch.Tensor
    sample_ids: torch.Tensor  # [B] the micro-batch's ids
    scores: dict[str, torch.Tensor]  # per-sample statistics of the whole micro-batch (store fields)
    samples_trained: torch.Tensor
    tokens_trained: torch.Tensor
    forward_tokens: torch.Tensor  # tokens forwarded with gradients
    scoring_tokens: torch.Tensor | None = None  # tokens forwarded without (a separate scoring forward)
    wrong_tokens_trained: torch.Tensor | None = None  # when the data marks wrong-answer tokens
    trained_mask: torch.Tensor | None = None  # [B] rows that trained (a batch plan)
    token_keep: torch.Tensor | None = None  # [B, T] kept tokens, label coordinates (a batch plan)
    response_mask: torch.Tensor | None = None  # [B, T] response tokens (a batch plan)
    batch_info: dict | None = None  # a batch plan's numbers (quadrant counts, ...)
    # response tokens of the trained rows: tokens_trained / response_tokens is the token keep ratio
    response_tokens: torch.Tensor | None = None

    @classmethod
    def from_outputs(cls, outputs: Any) -> "StepRecord | None":
        """The record in a Lightning ``training_step`` result: qtune's module returns it under
        ``record``; a user's module may return the documented dict (``loss``, ``sample_ids``,
        ``scores``, counters), read here into a record. None when there is nothing to book."""
        if isinstance(outputs, cls):
            return outputs
        if not isinstance(outputs, dict):
            return None
        if isinstance(outputs.get("record"), cls):
            return outputs["record"]
        if "sample_ids" not in outputs:
            return None
        ids = outputs["sample_ids"]
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in outputs.items() if k in known}
        values.setdefault("scores", {})
        values.setdefault("samples_trained", torch.tensor(float(ids.numel())))
        for counter in ("tokens_trained", "forward_tokens"):
            values.setdefault(counter, torch.zeros(()))
        return cls(**values)


def train_step(
    stats_fn: Callable,
    batch: dict,
    strategy,
    epoch: int,
    step: int,
    task: str = "sft",
    token_fn: Callable | None = None,
) -> StepRecord:
    """The loss of one micro-batch and its record. ``stats_fn(batch, labels=None)`` gives the
    token statistics (with gradients); ``strategy`` is the run's (None: train everything);
    ``token_fn`` computes its token rule's inputs (``qtune.pruning.token_step.TokenStep`` bound
    to the policy model; None: rules on the policy's own statistics only)."""
    if is_packed(batch):  # several samples per row: per-sample views of the same step
        rule = getattr(strategy, "token_rule", None)
        if rule is not None and needs_step_extras(rule.needs()):
            raise ValueError(
                f"token rule {rule.name!r} reads a reference or top-K entropies, which packed "
                "batches do not compute yet (data.packing=true)"
            )
        return StepRecord(**packed_train_step(stats_fn, batch, strategy, epoch, step))
    weights = batch.get("sample_weight")
    ids = batch["sample_id"]
    if strategy is not None and strategy.uses_batch_plan:
        s = planned_step(stats_fn, batch, strategy, weights, epoch, step, task)
        return StepRecord(**planned_record(s, ids))
    rule = getattr(strategy, "token_rule", None)
    scoring = None
    if rule is None:
        stats = stats_fn(batch)
        mask = stats.valid
        loss, trained, kept = masked_token_mean(stats.loss, mask, weights), mask.sum(), mask
        response = trained
    else:  # the rule's inputs (a reference forward, top-K entropy, ...): qtune.pruning.token_step
        stats, inputs, scoring = rule_inputs(stats_fn, batch, strategy, epoch, step, token_fn)
        mask = stats.valid
        decided = rule.apply(inputs)
        loss, trained, kept = decided.reduce(stats.loss, weights), decided.tokens_trained, decided.weights != 0
        response = decided.response_tokens
    return StepRecord(
        loss,
        ids,
        sample_scores(stats, mask),
        torch.tensor(float(ids.numel()), device=ids.device),
        trained,
        forward_tokens(batch),
        scoring,
        wrong_tokens_trained=wrong_tokens_trained(batch, kept).get("wrong_tokens_trained"),
        response_tokens=response,
    )
