"""An epoch's plan as packed rows: what the pruning callback's loader iterates when the data
packs (``data.packing=true``).

The kept samples are packed by :func:`qtune.data.packing.pack_plan` (deterministic from the
plan, the lengths, seed and epoch, so every rank builds the same rows and a resumed run the
same ones again); the loader shards and skips rows as the padded loader does sample ids, and
collates each batch of rows with :func:`qtune.data.packed_collate.collate_packed`.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from qtune.data.packing import PackedPlan, pack_plan, packing_counts
from qtune.data.packing_config import Packing


def sample_lengths(dataset) -> np.ndarray:
    """Tokens of every item of ``dataset``: from its tokenised lists when it keeps them
    (``SFTDataset.input_ids``), else by reading each item once."""
    ids = getattr(dataset, "input_ids", None)
    if ids is not None and len(ids) == len(dataset):
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    return np.fromiter((len(dataset[i]["input_ids"]) for i in range(len(dataset))), dtype=np.int64, count=len(dataset))


class PackedRows(Dataset):
    """Row ``i`` of a packed plan as the list of its samples' items."""

    def __init__(self, dataset, packed: PackedPlan) -> None:
        self.dataset, self.packed = dataset, packed

    def __len__(self) -> int:
        return self.packed.num_rows

    def __getitem__(self, i: int) -> list[dict]:
        return [self.dataset[int(s)] for s in self.packed.row(int(i))]


def row_length(packing: Packing, lengths: np.ndarray) -> int:
    """The row length in tokens: ``max_tokens_per_row``, or the longest sample when unset."""
    return int(packing.max_tokens_per_row or (lengths.max() if len(lengths) else 1))


def pack_epoch(
    plan_ids, lengths: np.ndarray, packing: Packing, *, seed: int, epoch: int, rows_per_batch: int
) -> tuple[PackedPlan, dict[str, float]]:
    """The plan's rows and the epoch's packing numbers (for its history entry): rows, tokens,
    samples cut to the row length, and the padding share of packed batches of
    ``rows_per_batch`` rows against padded batches of as many samples, in plan order."""
    ids = np.asarray(plan_ids, dtype=np.int64)
    plan_lengths = lengths[ids]
    cap = row_length(packing, lengths)
    packed = pack_plan(ids, plan_lengths, cap, seed=seed, epoch=epoch, policy=packing.policy)
    c = packing_counts(packed, plan_lengths, batch_size=rows_per_batch, rows_per_batch=rows_per_batch)
    counts = {
        "packing_rows": int(c["rows"]),
        "packing_tokens": int(c["tokens"]),
        "packing_slots": int(c["packed_slots"]),
        "packing_truncated": int(c["truncated"]),
        "packing_padding_share": float(c["packed_padding_share"]),
        "padded_padding_share": float(c["padded_padding_share"]),
        "max_tokens_per_row": cap,
    }
    return packed, counts
