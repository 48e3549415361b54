"""One training step under a batch plan, for any trainer (no Lightning here).

The strategy's declared contract (``PruningStrategy.batch_scoring``, ``entropy_scope``,
``loss_denominator``) decides the shape of the step: "separate" scores the micro-batch without
gradients, lets the strategy choose rows and tokens, then forwards and backwards the kept rows
only (the compute saving); "reuse" forwards once with gradients and the plan only masks the
loss. The Lightning module and the Hugging Face Trainer mixin both call :func:`planned_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from qtune.pruning.batch_stats import next_token_labels, sample_scores
from qtune.pruning.loss import masked_token_mean
from qtune.strategies.base import BatchStats


def select_rows(batch: dict, rows: torch.Tensor) -> dict:
    """Sub-batch of the given rows, trimmed to the longest kept sequence (less compute)."""
    out = {k: v[rows] for k, v in batch.items()}
    if "attention_mask" in out and out["attention_mask"].numel():
        length = int(out["attention_mask"].sum(-1).max())
        out = {k: (v[:, :length] if v.dim() == 2 and k != "sample_id" else v) for k, v in out.items()}
    return out


def forward_tokens(batch: dict) -> torch.Tensor:
    if "seg" in batch:  # packed: the samples' tokens, not the padding
        return (batch["seg"] >= 0).sum()
    if "attention_mask" in batch:
        return batch["attention_mask"].sum()
    return torch.tensor(batch["sample_id"].numel(), device=batch["sample_id"].device)


def wrong_tokens_trained(batch: dict, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Wrong-answer tokens left in the loss ``mask`` [B, T], when the batch carries their
    flags (``wrong_tokens`` [B, >= T], label coordinates; the embedded task marks them)."""
    wrong = batch.get("wrong_tokens")
    if wrong is None:
        return {}
    return {"wrong_tokens_trained": (mask & wrong[:, : mask.shape[1]].bool()).sum()}


def response_mask(batch: dict, task: str = "sft") -> torch.Tensor:
    labels = batch["labels"].view(-1, 1) if task == "classify" else batch["labels"][:, 1:]
    return labels != -100


@dataclass
class PlannedStep:
    loss: torch.Tensor
    scores: dict[str, torch.Tensor]  # per-sample scores of the whole micro-batch
    keep: torch.Tensor  # [B] rows that trained
    mask: torch.Tensor  # token mask of the loss (rows of ``trained_ids``)
    trained_ids: torch.Tensor  # sample ids of the rows in ``mask``
    token_keep: torch.Tensor  # [B, T] kept tokens in the whole batch's label coordinates
    response: torch.Tensor  # [B, T] response tokens of the whole batch
    forward_tokens: torch.Tensor
    scoring_tokens: torch.Tensor
    info: dict
    wrong_tokens_trained: torch.Tensor | None = None  # when the batch carries wrong_tokens


def planned_record(s: PlannedStep, sample_ids: torch.Tensor) -> dict:
    """The ``StepRecord`` fields of a planned step (padded or packed), by name."""
    return dict(
        loss=s.loss,
        sample_ids=sample_ids,
        scores=s.scores,
        samples_trained=s.keep.sum(),
        tokens_trained=s.mask.sum(),
        forward_tokens=s.forward_tokens,
        scoring_tokens=s.scoring_tokens,
        wrong_tokens_trained=s.wrong_tokens_trained,
        trained_mask=s.keep,
        token_keep=s.token_keep,
        response_mask=s.response,
        batch_info=s.info,
        response_tokens=(s.response & s.keep.unsqueeze(-1)).sum(),
    )


def planned_step(
    stats_fn: Callable, batch: dict, strategy, weights: torch.Tensor | None, epoch: int, step: int, task: str = "sft"
) -> PlannedStep:
    """Score ``batch``, ask ``strategy.batch_plan``, and compute the loss of what it keeps.
    ``stats_fn(batch, labels=None)`` gives token statistics (with gradients when enabled);
    ``weights`` [B] are the epoch plan's loss weights of the batch's rows, or None."""
    reuse = strategy.batch_scoring == "reuse"
    response = response_mask(batch, task)
    full_labels = None if task == "classify" else next_token_labels(batch)
    all_tokens = strategy.entropy_scope == "all"
    with torch.set_grad_enabled(reuse and torch.is_grad_enabled()):
        # token statistics where the plan reads them: every attended token for an entropy over
        # all of them, else the response only (which the response-only LM head computes alone)
        scored = stats_fn(batch, full_labels if all_tokens else None)
    attended = scored.valid if full_labels is None else full_labels != -100
    scores = sample_scores(scored, response)
    plan = strategy.batch_plan(
        BatchStats(
            sample_ids=batch["sample_id"],
            sample_loss=scores["loss"],
            sample_ppl=scores["loss"].exp(),
            sample_entropy=sample_scores(scored, attended)["entropy"] if all_tokens else scores["entropy"],
            token_loss=scored.loss.detach(),
            token_entropy=scored.entropy,
            response_mask=response,
            attention_mask=attended,
            epoch=epoch,
            step=step,
        )
    )
    device = response.device
    keep = plan.keep.to(device).bool()
    token_mask = plan.token_mask.to(device).bool() if plan.token_mask is not None else None
    denominator = attended.sum() if strategy.loss_denominator == "all_attended" else None
    if reuse:
        mask = response & keep.unsqueeze(-1)
        if token_mask is not None:
            mask = mask & token_mask
        loss = masked_token_mean(scored.loss, mask, weights, denominator)
        return PlannedStep(
            loss,
            scores,
            keep,
            mask,
            batch["sample_id"],
            mask,
            response,
            forward_tokens(batch),
            torch.zeros((), device=device),
            plan.info,
            wrong_tokens_trained(batch, mask).get("wrong_tokens_trained"),
        )
    rows = keep.nonzero().flatten()
    nothing_kept = rows.numel() == 0
    if nothing_kept:  # still run one row with an empty mask: every rank must backward
        rows = rows.new_zeros(1)
    sub = select_rows(batch, rows)
    stats = stats_fn(sub)
    mask = stats.valid & (not nothing_kept)
    if token_mask is not None:
        mask = mask & token_mask[rows][:, : mask.shape[1]]
    loss = masked_token_mean(stats.loss, mask, weights[rows] if weights is not None else None, denominator)
    token_keep = torch.zeros_like(response)
    if not nothing_kept:
        token_keep[rows, : mask.shape[1]] = mask
    return PlannedStep(
        loss,
        scores,
        keep,
        mask,
        sub["sample_id"],
        token_keep,
        response,
        forward_tokens(sub),
        forward_tokens(batch),
        plan.info,
        wrong_tokens_trained(sub, mask).get("wrong_tokens_trained"),
    )
