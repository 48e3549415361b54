"""A sampler that yields exactly one rank's share of an epoch plan.

The plan (sample ids chosen by the strategy) is shuffled by a generator seeded by (seed, epoch)
and padded by wrapping around to a multiple of the world size (times the samples of one
optimiser step, where an integration asks for whole steps), then rank r takes every world_size-th id
starting at r, as torch's DistributedSampler does. ``__iter__`` is pure: it may
run twice per epoch (Lightning re-creates iterators) and always yields the same ids.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from qtune.strategies.base import epoch_generator


def shard_plan(
    plan_ids: torch.Tensor,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    shuffle: bool = True,
    multiple: int = 1,
) -> torch.Tensor:
    """This rank's ids of ``plan_ids``; all ranks get the same count, a multiple of `multiple`
    (padding repeats ids from the shuffled plan's start)."""
    if world_size < 1 or not (0 <= rank < world_size):
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    ids = torch.as_tensor(plan_ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("the epoch plan is empty: the strategy selected no samples")
    if shuffle:
        ids = ids[torch.randperm(ids.numel(), generator=epoch_generator(seed, epoch, salt=17))]
    per_rank = -(-ids.numel() // world_size)
    per_rank = -(-per_rank // multiple) * multiple
    total = per_rank * world_size
    if total > ids.numel():  # pad by repeating from the start: every rank runs the same steps
        reps = -(-total // ids.numel())
        ids = ids.repeat(reps)[:total]
    return ids[rank:total:world_size]


class PlanSampler(Sampler[int]):
    """``skip`` drops the first ids of this rank's share (a run resumed mid-epoch) while the
    length stays the whole share, so Lightning's restored batch counter still ends the epoch
    at the right batch."""

    def __init__(
        self,
        plan_ids: torch.Tensor,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        skip: int = 0,
    ) -> None:
        self.ids = shard_plan(plan_ids, seed=seed, epoch=epoch, rank=rank, world_size=world_size, shuffle=shuffle)
        self.epoch = epoch
        self.skip = int(skip)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this; the plan was fixed for its epoch when the loader was built."""
        return None

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids[self.skip :].tolist())

    def __len__(self) -> int:
        return int(self.ids.numel())
