"""One training step on a packed batch (several samples per row, ``seg`` in the batch).

The step computes the token statistics of the packed rows once and reads everything per sample
through a :class:`~qtune.pruning.segments.SegmentMap`, so the score store, the loss and the
counters mean what they mean on a padded batch:

* per-sample scores: ``SegmentMap.scores`` (the values ``sample_scores`` gives padded);
* plan weights (InfoBatch, ``batch["sample_weight"]`` [S]) spread over each sample's positions;
* a token rule sees one row per sample ([S, T] views): ``scope: sequence`` ranks within a
  sample, a smoothing window never reaches into the next sample, random keys are drawn per
  sample id; its weights go back to packed coordinates;
* a batch plan (Q-Tuning) gets :class:`BatchStats` with one row per sample, as padded, and the
  samples it keeps are re-packed into fewer, shorter rows (best-fit-decreasing, rows no wider
  than the batch's) before the forward that trains, so pruning saves compute as on the padded
  path; its token mask goes back per token.

Per-sample views are ``L - 1`` wide (the packed rows' label width), at least as wide as any
sample; the padded path's are as wide as the batch's longest sample. Columns past a sample's
end are masked in both, so a batch plan decides the same.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

from qtune.data.packed_collate import place_samples
from qtune.data.packing import pack_plan
from qtune.data.sft import IGNORE_INDEX
from qtune.pruning.batch_stats import next_token_labels
from qtune.pruning.loss import masked_token_mean
from qtune.pruning.planned_step import (
    PlannedStep,
    forward_tokens,
    planned_record,
    response_mask,
    wrong_tokens_trained,
)
from qtune.pruning.segments import SegmentMap
from qtune.pruning.token_inputs import token_inputs
from qtune.strategies.base import BatchStats


def is_packed(batch: dict) -> bool:
    return "seg" in batch


def sample_views(segments: SegmentMap, stats):
    """The token statistics as one row per sample ([S, T], loss detached): a token rule's input."""
    width = segments.seg.shape[1]
    values = [segments.to_samples(t.detach(), width) for t in stats[:-1]]
    return type(stats)(*values, segments.to_samples(stats.valid, width, fill=False))


def position_weights(segments: SegmentMap, weights: torch.Tensor | None) -> torch.Tensor | None:
    """Per-sample loss weights [S] at each of the sample's positions (0 elsewhere)."""
    return None if weights is None else segments.per_position(weights.float(), fill=0.0)


def packed_train_step(stats_fn: Callable, batch: dict, strategy, epoch: int, step: int) -> dict:
    """The fields of :class:`~qtune.pruning.train_step.StepRecord` for a packed batch."""
    ids = batch["sample_id"]
    if strategy is not None and strategy.uses_batch_plan:
        s = packed_planned_step(stats_fn, batch, strategy, batch.get("sample_weight"), epoch, step)
        return planned_record(s, ids)
    segments = SegmentMap.labels(batch)
    stats = stats_fn(batch)
    mask = stats.valid
    weights = position_weights(segments, batch.get("sample_weight"))
    rule = getattr(strategy, "token_rule", None)
    if rule is None:
        loss, trained, kept = masked_token_mean(stats.loss, mask, weights), mask.sum(), mask
        response = trained
    else:
        views = sample_views(segments, stats)
        seed = getattr(strategy, "seed", 0)
        inputs = token_inputs(rule.needs(), views, views.valid, sample_ids=ids, seed=seed, epoch=epoch, step=step)
        decided = rule.apply(inputs)
        packed = dataclasses.replace(
            decided,
            weights=segments.to_packed(decided.weights, fill=0.0),
            extra=None if decided.extra is None else segments.to_packed(decided.extra, fill=0.0),
        )
        loss, trained, kept = packed.reduce(stats.loss, weights), packed.tokens_trained, packed.weights != 0
        response = decided.response_tokens
    return dict(
        loss=loss,
        sample_ids=ids,
        scores=segments.scores(stats, mask),
        samples_trained=torch.tensor(float(ids.numel()), device=ids.device),
        tokens_trained=trained,
        forward_tokens=forward_tokens(batch),
        wrong_tokens_trained=wrong_tokens_trained(batch, kept).get("wrong_tokens_trained"),
        response_tokens=response,
    )


def repack(batch: dict, keep: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """A packed batch of the kept samples only (``keep`` [S] bool; none kept: the first sample,
    so every rank still runs a forward and backward) and their indices in ``batch``'s samples.

    Each kept sample's tokens are read out of the rows and placed again best-fit-decreasing
    into rows as wide as the batch's (:func:`qtune.data.packing.pack_plan`): one host sync."""
    kept = keep.nonzero().flatten()
    if kept.numel() == 0:
        kept = kept.new_zeros(1)
    width = batch["input_ids"].shape[1]
    lengths = batch["sample_length"][kept]
    plan = pack_plan(np.arange(kept.numel()), lengths.cpu().numpy(), width, seed=0, epoch=0, shuffle=False)
    picked = kept[torch.as_tensor(plan.sample_ids, device=kept.device)]
    tokens = SegmentMap.tokens(batch)
    lengths = batch["sample_length"][picked]
    inside = torch.arange(width, device=kept.device) < lengths.unsqueeze(1)
    ids = tokens.to_samples(batch["input_ids"], width)[picked][inside]
    labels = tokens.to_samples(batch["labels"], width, fill=IGNORE_INDEX)[picked][inside]
    sub = place_samples(ids, labels, lengths, torch.as_tensor(np.diff(plan.offsets)))
    sub["sample_id"] = batch["sample_id"][picked]
    return sub, picked


def packed_planned_step(
    stats_fn: Callable, batch: dict, strategy, weights: torch.Tensor | None, epoch: int, step: int
) -> PlannedStep:
    """:func:`qtune.pruning.planned_step.planned_step` for a packed batch: the batch plan
    chooses among the batch's samples; ``token_keep`` and ``response`` come back one row per
    sample ([S, L - 1], ``sample_id`` order), ``mask`` in the trained batch's coordinates."""
    reuse = strategy.batch_scoring == "reuse"
    segments = SegmentMap.labels(batch)
    width = segments.seg.shape[1]
    response = response_mask(batch)
    with torch.set_grad_enabled(reuse and torch.is_grad_enabled()):
        scored = stats_fn(batch, next_token_labels(batch))
    attended = scored.valid
    scores = segments.scores(scored, response)
    resp_s = segments.to_samples(response, width, fill=False)
    plan = strategy.batch_plan(
        BatchStats(
            sample_ids=batch["sample_id"],
            sample_loss=scores["loss"],
            sample_ppl=scores["loss"].exp(),
            sample_entropy=segments.scores(scored, attended)["entropy"]
            if strategy.entropy_scope == "all"
            else scores["entropy"],
            token_loss=segments.to_samples(scored.loss.detach(), width),
            token_entropy=segments.to_samples(scored.entropy.detach(), width),
            response_mask=resp_s,
            attention_mask=segments.to_samples(attended, width, fill=False),
            epoch=epoch,
            step=step,
        )
    )
    device = response.device
    keep = plan.keep.to(device).bool()
    trained_s = resp_s & keep.unsqueeze(-1)  # [S, W]: what the loss trains, per sample
    if plan.token_mask is not None:
        trained_s = trained_s & plan.token_mask.to(device).bool()
    trained = segments.to_packed(trained_s, fill=False)  # the same in the batch's coordinates
    denominator = attended.sum() if strategy.loss_denominator == "all_attended" else None
    wrong = wrong_tokens_trained(batch, trained).get("wrong_tokens_trained")
    if reuse:
        loss = masked_token_mean(scored.loss, trained, position_weights(segments, weights), denominator)
        zero = torch.zeros((), device=device)
        return PlannedStep(
            loss,
            scores,
            keep,
            trained,
            batch["sample_id"],
            trained_s,
            resp_s,
            forward_tokens(batch),
            zero,
            plan.info,
            wrong,
        )
    sub, picked = repack(batch, keep)
    stats = stats_fn(sub)
    sub_segments = SegmentMap.labels(sub)
    mask = stats.valid & sub_segments.to_packed(trained_s[picked], fill=False)
    sub_weights = None if weights is None else position_weights(sub_segments, weights[picked])
    loss = masked_token_mean(stats.loss, mask, sub_weights, denominator)
    return PlannedStep(
        loss,
        scores,
        keep,
        mask,
        sub["sample_id"],
        trained_s,
        resp_s,
        forward_tokens(sub),
        forward_tokens(batch),
        plan.info,
        wrong,
    )
