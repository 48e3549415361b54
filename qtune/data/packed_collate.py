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
    starts, row_tokens, at = [], [], 0
    for n in per_row:
        offsets = [0]
        for m in lengths[at : at + n]:
            offsets.append(offsets[-1] + m)
        starts += offsets[:-1]
        row_tokens.append(offsets[-1])
        at += n
    if cut is not None and max(row_tokens) > cut:
        raise ValueError(f"a packed row holds {max(row_tokens)} tokens, more than data.max_tokens_per_row={cut}")
    width = max(row_tokens)
    sample_length = torch.tensor(lengths, dtype=torch.long)
    row_of = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(per_row, dtype=torch.long))
    start = torch.tensor(starts, dtype=torch.long)
    ends = torch.cumsum(sample_length, 0)
    # scatter every token at (row, start + k)
    total = int(ends[-1])
    sample_of = torch.repeat_interleave(torch.arange(len(items)), sample_length)
    k = torch.arange(total) - (ends - sample_length)[sample_of]
    r, c = row_of[sample_of], start[sample_of] + k
    ids = torch.cat([torch.as_tensor(it["input_ids"][:n], dtype=torch.long) for it, n in zip(items, lengths)])
    labs = torch.cat([torch.as_tensor(it["labels"][:n], dtype=torch.long) for it, n in zip(items, lengths)])
    labs = labs.masked_fill(k == 0, IGNORE_INDEX)  # the boundary rule
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    seg = torch.full(shape, -1, dtype=torch.long)
    input_ids[r, c], labels[r, c], seg[r, c] = ids, labs, sample_of
    # padding: positions 0, 1, ... from the row's end, a segment of its own
    column = torch.arange(width).expand(shape)
    pad_pos = column - torch.tensor(row_tokens, dtype=torch.long).unsqueeze(1)
    position_ids = pad_pos.clone()
    position_ids[r, c] = k
    return {
        "sample_id": torch.tensor([int(it["sample_id"]) for it in items], dtype=torch.long),
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "seg": seg,
        "sample_length": sample_length,
    }
