"""Padding-free batches (TRL's ``padding_free=True``, transformers' ``DataCollatorWithFlattening``)
in qtune's packed layout, so the pruning step reads them per sample.

Those collators concatenate a batch's samples into one row ([1, N]), in the order given, with
``position_ids`` restarting at 0 at each sample and no attention mask. The samples stay whole and
in order, so the row maps back to them: each feature's token count says where it starts. The
row is rebuilt by :func:`qtune.data.packed_collate.place_samples` (``seg``, ``position_ids``,
``sample_length``; the collator's own ``labels`` kept, a sample's first label set to -100 as
both collators already do), and :func:`qtune.pruning.train_step.train_step` takes its packed
path. The collators' FlashAttention extras (``cu_seq_lens_*``, ``max_length_*``, ``seq_idx``) are
dropped: transformers derives the same boundaries from the restarting ``position_ids``.
"""

from __future__ import annotations

import torch

from qtune.data.packed_collate import place_samples
from qtune.pruning.batch_stats import sample_scores
from qtune.pruning.segments import SegmentMap


def is_flattened(batch: dict, num_features: int) -> bool:
    """One row for the whole batch with restarting positions and no attention mask (a single
    feature reads the same way, and converts harmlessly)."""
    ids = batch.get("input_ids")
    if ids is None or ids.dim() != 2 or ids.shape[0] != 1:
        return False
    return num_features > 1 or ("position_ids" in batch and "attention_mask" not in batch)


def packed_from_flattened(batch: dict, lengths: list[int], sample_ids: torch.Tensor, collator) -> dict:
    """The flattened ``batch`` of samples with ``lengths`` tokens (in order) as a packed batch of
    one row; refused, naming the collator, when its row does not hold them whole with positions
    restarting at 0 (attention would then cross samples, or a sample would be cut)."""
    name = type(collator).__name__
    total, width = sum(lengths), batch["input_ids"].shape[1]
    positions = batch.get("position_ids")
    if positions is None:
        raise ValueError(
            f"PruningMixin: {name} flattens {len(lengths)} samples into one row without position_ids, "
            "so attention would cross samples; have it return position_ids (DataCollatorWithFlattening: "
            "return_position_ids=True)"
        )
    expected = torch.cat([torch.arange(n) for n in lengths]) if lengths else torch.zeros(0, dtype=torch.long)
    if total > width or not torch.equal(positions[0, :total].cpu().long(), expected):
        raise ValueError(
            f"PruningMixin: {name} did not return the batch's {len(lengths)} samples ({total} tokens) whole "
            "and in order, with position_ids restarting at 0 at each sample; per-sample statistics need "
            "that layout (DataCollatorWithFlattening: position_ids_start=0)"
        )
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    out = place_samples(
        batch["input_ids"][0, :total], batch["labels"][0, :total], lengths_t, torch.tensor([len(lengths)])
    )
    out["sample_id"] = sample_ids
    return out


def per_sample_scores(stats, batch: dict) -> dict[str, torch.Tensor]:
    """Per-sample aggregates over the response tokens, in ``batch["sample_id"]`` order, of a
    padded or a packed batch (a scoring pass sees either)."""
    if "seg" in batch:
        return SegmentMap.labels(batch).scores(stats, stats.valid)
    return sample_scores(stats, stats.valid)
