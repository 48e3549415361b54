"""Collate packed rows (several SFT items per row) into one batch that keeps every sample apart.

Label rule: labels stay unshifted (as in :func:`qtune.data.sft.collate_sft`); the statistics
use ``labels[:, 1:]`` as the targets of ``logits[:, :-1]``, so ``labels[:, j]`` is what position
``j - 1`` predicts. A sample's first position would be predicted from the previous sample's last
token, so its label is -100, as is padding: no loss term crosses a boundary, and each sample's
targets are exactly those of the padded path (whose first label is never a target either).

Attention: there is no ``attention_mask``. transformers (5.x) keeps packed samples apart only
when the mask is absent, ``position_ids`` restart at 0 inside the row and no cache is in use
(call the model with ``use_cache=False``: a config's ``use_cache=True`` builds a cache and
turns the detection off, and attention then crosses samples). Padding at a row's end gets
positions 0, 1, ... of its own, so it is a segment of its own that no real token sees.

Segment map: ``seg`` [R, L] gives, at each position, the index of its sample in the batch's
sample list (``sample_id`` [S], row-major order), -1 at padding. With ``position_ids`` it maps
any per-position tensor to samples (see :mod:`qtune.pruning.segments`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from qtune.data.sft import IGNORE_INDEX


def collate_packed(rows: Sequence[Sequence[dict]], pad_id: int = 0, max_tokens_per_row: int | None = None) -> dict:
    """Batch of packed rows, each a list of items (``sample_id``, ``input_ids``, ``labels``).

    Items longer than ``max_tokens_per_row`` are cut to their first tokens (the packer's
    "truncate" policy); rows are padded to the longest row of this batch only.
    Returns ``input_ids``, ``labels``, ``position_ids``, ``seg`` [R, L], ``sample_id`` and
    ``sample_length`` [S] (tokens each sample has in the batch).
    """
    cut = max_tokens_per_row
    items = [it for row in rows for it in row]
    if not items:
        raise ValueError("a packed batch needs at least one sample")
    lengths = [min(len(it["input_ids"]), cut) if cut is not None else len(it["input_ids"]) for it in items]
    per_row = [len(row) for row in rows]
    if min(per_row) == 0:
        raise ValueError("a packed row needs at least one sample")
    if cut is not None:
        at, widest = 0, 0
        for n in per_row:
            widest, at = max(widest, sum(lengths[at : at + n])), at + n
        if widest > cut:
            raise ValueError(f"a packed row holds {widest} tokens, more than data.max_tokens_per_row={cut}")
    ids = torch.cat([torch.as_tensor(it["input_ids"][:n], dtype=torch.long) for it, n in zip(items, lengths)])
    labs = torch.cat([torch.as_tensor(it["labels"][:n], dtype=torch.long) for it, n in zip(items, lengths)])
    batch = place_samples(ids, labs, torch.tensor(lengths, dtype=torch.long), torch.tensor(per_row), pad_id)
    return {"sample_id": torch.tensor([int(it["sample_id"]) for it in items], dtype=torch.long), **batch}


def place_samples(
    ids: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, per_row: torch.Tensor, pad_id: int = 0
):
    """The packed layout of samples given as flat tensors, on their device: ``ids`` and
    ``labels`` [N] (the samples' tokens one after another), ``lengths`` [S], ``per_row`` [R]
    (consecutive samples per row). Returns ``input_ids``, ``labels``, ``position_ids``, ``seg``
    [R, L] and ``sample_length``; applies the boundary rule. One host sync (the width)."""
    device = ids.device
    lengths, per_row = lengths.to(device), per_row.to(device)
    num_rows, num_samples = per_row.numel(), lengths.numel()
    row_of = torch.repeat_interleave(torch.arange(num_rows, device=device), per_row)
    ends = torch.cumsum(lengths, 0)
    first_of_row = torch.cumsum(per_row, 0) - per_row  # index of each row's first sample
    start = (ends - lengths) - (ends - lengths)[first_of_row][row_of]  # column of each sample's first token
    row_tokens = torch.zeros(num_rows, dtype=torch.long, device=device).index_add_(0, row_of, lengths)
    width = int(row_tokens.max())
    # scatter every token at (row, start + k)
    sample_of = torch.repeat_interleave(torch.arange(num_samples, device=device), lengths)
    k = torch.arange(ids.numel(), device=device) - (ends - lengths)[sample_of]
    r, c = row_of[sample_of], start[sample_of] + k
    labs = labels.masked_fill(k == 0, IGNORE_INDEX)  # the boundary rule
    shape = (num_rows, width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long, device=device)
    out_labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long, device=device)
    seg = torch.full(shape, -1, dtype=torch.long, device=device)
    input_ids[r, c], out_labels[r, c], seg[r, c] = ids, labs, sample_of
    # padding: positions 0, 1, ... from the row's end, a segment of its own
    position_ids = torch.arange(width, device=device).expand(shape) - row_tokens.unsqueeze(1)
    position_ids[r, c] = k
    return {
        "input_ids": input_ids,
        "labels": out_labels,
        "position_ids": position_ids,
        "seg": seg,
        "sample_length": lengths,
    }
