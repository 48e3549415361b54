"""Deterministic packing of an epoch plan into rows of at most ``max_tokens_per_row`` tokens.

Every rank calls :func:`pack_plan` with the same plan, seed and epoch and gets the same rows, so
rows can be sharded like sample ids. Bins are filled best-fit-decreasing: samples in decreasing
length (equal lengths in plan order), each into the row with the least room that still holds it,
the most recently filled row on a tie (a fixed rule, so the result is a pure function of the
inputs). That rule lets all samples of one length be placed with a few array operations per
visited room size instead of one Python step per sample, so a plan of millions packs in seconds.
The rows are then shuffled by a generator seeded by (seed, epoch): decreasing-length order
would otherwise put the long rows first in every epoch.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

POLICIES = ("refuse", "truncate")
_SALT = 4099  # keeps the row shuffle's stream apart from the sampler's (seed, epoch) streams


@dataclass(frozen=True)
class PackedPlan:
    """Rows in compressed form: row ``i`` holds ``sample_ids[offsets[i]:offsets[i + 1]]`` with
    (possibly truncated) ``lengths`` aligned to ``sample_ids``; ``truncated`` counts cut samples."""

    sample_ids: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    max_tokens_per_row: int
    truncated: int = 0

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.sample_ids[self.offsets[i] : self.offsets[i + 1]]

    def rows(self) -> list[np.ndarray]:
        return [self.row(i) for i in range(self.num_rows)]

    def row_tokens(self) -> np.ndarray:
        """Tokens per row (before any padding)."""
        return np.add.reduceat(self.lengths, self.offsets[:-1]) if len(self.lengths) else np.zeros(0, np.int64)


def _row_generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + _SALT) % (2**63 - 1))
    return g


def _checked_lengths(sample_ids: np.ndarray, lengths: np.ndarray, cap: int, policy: str) -> tuple[np.ndarray, int]:
    if policy not in POLICIES:
        raise ValueError(f"data.packing_policy={policy!r} is not known; choose from {POLICIES}")
    if cap < 1:
        raise ValueError(f"data.max_tokens_per_row must be at least 1, got {cap}")
    if len(lengths) != len(sample_ids):
        raise ValueError(f"{len(sample_ids)} sample ids but {len(lengths)} lengths")
    if len(lengths) and lengths.min() < 1:
        i = int(np.argmin(lengths))
        raise ValueError(f"sample {int(sample_ids[i])} has length {int(lengths[i])}; packed samples need a token")
    over = lengths > cap
    if over.any() and policy == "refuse":
        i = int(np.flatnonzero(over)[0])
        raise ValueError(
            f"sample {int(sample_ids[i])} has {int(lengths[i])} tokens, more than data.max_tokens_per_row={cap} "
            f"({int(over.sum())} samples are longer); raise data.max_tokens_per_row or set "
            "data.packing_policy=truncate"
        )
    return np.minimum(lengths, cap), int(over.sum())


def best_fit_decreasing(lengths: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """(row of each sample, order in which samples were placed); lengths in [1, cap].

    Rows are kept in buckets by their room left. All samples of length ``l`` go in together:
    the fullest row with room >= l takes ``room // l`` of them in a row (after each, it is still
    the best fit, being the most recently filled), then the next one, then new rows.
    """
    n = len(lengths)
    order = np.lexsort((np.arange(n), -lengths))  # decreasing length, plan order on ties
    row_of = np.empty(n, dtype=np.int64)
    buckets: dict[int, list[int]] = {}  # room left -> rows, most recently filled last
    rooms: list[int] = []  # sorted rooms that have a row
    num_rows = 0
    sorted_lengths = lengths[order]
    starts = np.flatnonzero(np.r_[True, sorted_lengths[1:] != sorted_lengths[:-1]]) if n else np.zeros(0, int)
    ends = np.r_[starts[1:], n].astype(np.int64)

    def push(room: int, rows: list[int]) -> None:
        if room == 0:  # a full row takes nothing more
            return
        if room not in buckets:
            buckets[room] = []
            bisect.insort(rooms, room)
        buckets[room].extend(rows)

    for lo, hi in zip(starts.tolist(), ends.tolist()):
        size, left, at = int(sorted_lengths[lo]), hi - lo, lo
        while left:
            k = bisect.bisect_left(rooms, size)
            if k < len(rooms):
                room = rooms[k]
                avail = buckets[room]
                per = room // size
                take = min(len(avail), -(-left // per))
                used = avail[len(avail) - take :][::-1]  # most recently filled first
                del avail[len(avail) - take :]
                if not avail:
                    del buckets[room], rooms[k]
            else:  # no row has room: open new ones
                room, per = cap, cap // size
                take = -(-left // per)
                used = list(range(num_rows, num_rows + take))
                num_rows += take
            placed = min(left, take * per)
            row_of[order[at : at + placed]] = np.repeat(np.asarray(used, dtype=np.int64), per)[:placed]
            # every row but the last used is full for this size (room left < size)
            if take > 1:
                push(room - per * size, used[:-1])
            push(room - (placed - (take - 1) * per) * size, used[-1:])
            at += placed
            left -= placed
    return row_of, order


def pack_plan(
    sample_ids,
    lengths,
    max_tokens_per_row: int,
    *,
    seed: int,
    epoch: int,
    policy: str = "refuse",
    shuffle: bool = True,
) -> PackedPlan:
    """Pack an epoch plan's samples (ids and token counts, in plan order) into rows.

    ``policy`` says what happens to a sample longer than a row: "refuse" raises a ValueError
    naming it and ``data.max_tokens_per_row``; "truncate" keeps its first tokens (the collate
    cuts it the same way) and counts it in ``truncated``. Pure: same inputs, same rows.
    """
    ids = np.asarray(sample_ids, dtype=np.int64).ravel()
    raw = np.asarray(lengths, dtype=np.int64).ravel()
    cap = int(max_tokens_per_row)
    cut, truncated = _checked_lengths(ids, raw, cap, policy)
    row_of, order = best_fit_decreasing(cut, cap)
    num_rows = int(row_of.max()) + 1 if len(row_of) else 0
    # within a row, samples in placement order; rows in a shuffled order
    by_row = order[np.argsort(row_of[order], kind="stable")]
    counts = np.bincount(row_of, minlength=num_rows)
    perm = torch.randperm(num_rows, generator=_row_generator(seed, epoch)).numpy() if shuffle else np.arange(num_rows)
    starts = np.r_[0, np.cumsum(counts)[:-1]] if num_rows else np.zeros(0, np.int64)
    # gather row perm[i]'s samples as the i-th row
    new_counts = counts[perm]
    offsets = np.r_[0, np.cumsum(new_counts)].astype(np.int64)
    take = np.repeat(starts[perm] - offsets[:-1], new_counts) + np.arange(len(by_row))
    picked = by_row[take]
    return PackedPlan(ids[picked], cut[picked], offsets, cap, truncated)


def packing_counts(packed: PackedPlan, plan_lengths, batch_size: int, rows_per_batch: int = 1) -> dict[str, float]:
    """What packing saves: token slots of the packed rows (batches of ``rows_per_batch`` rows,
    each padded to its longest row) against padded batching of the same plan, in plan order
    (``plan_lengths``, cut to the row length as the packer cut them) with ``batch_size`` samples
    per batch, each padded to its longest sample."""
    lengths = np.minimum(np.asarray(plan_lengths, dtype=np.int64).ravel(), packed.max_tokens_per_row)
    tokens = int(lengths.sum())
    if tokens != int(packed.lengths.sum()):
        raise ValueError("plan_lengths are not the lengths of the packed plan's samples")

    def slots(sizes: np.ndarray, per_batch: int) -> int:
        if not len(sizes):
            return 0
        starts = np.arange(0, len(sizes), per_batch)
        widest = np.maximum.reduceat(sizes, starts)
        return int((widest * np.diff(np.r_[starts, len(sizes)])).sum())

    packed_slots = slots(packed.row_tokens(), rows_per_batch)
    padded_slots = slots(lengths, batch_size)
    return {
        "samples": len(lengths),
        "tokens": tokens,
        "rows": packed.num_rows,
        "truncated": packed.truncated,
        "packed_batches": -(-packed.num_rows // rows_per_batch),
        "packed_slots": packed_slots,
        "packed_padding_share": 1 - tokens / packed_slots if packed_slots else 0.0,
        "padded_batches": -(-len(lengths) // batch_size),
        "padded_slots": padded_slots,
        "padded_padding_share": 1 - tokens / padded_slots if padded_slots else 0.0,
    }
