"""The mixin's data order over one process or several: the epoch plan as one global sequence
that accelerate shards, and the scoring pass's equal shares of the dataset.

Under ``torchrun`` / ``accelerate launch`` Trainer's dataloader is prepared by accelerate, which
wraps its batch sampler so that rank r takes batches r, r + W, r + 2W, ... of one sequence. So
the sampler yields the same sequence on every rank (the shuffled plan, padded by repeating its
start to a multiple of per-device batch × accumulation × W): every rank then runs the same
whole optimiser steps, no rank waits on another at the epoch's end, and each planned id is
trained once across the ranks, apart from the padding (counted in ``samples_trained``). A
``DistributedSampler`` of our own would shard twice.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import Sampler

from qtune.pruning.sampler import shard_plan


class EpochPlanSampler(Sampler[int]):
    """The ids of the current epoch's plan, in the order every rank shares; ``len`` is the
    dataset's (Trainer's upper bound for an epoch, read once). The epoch is the mixin's own
    count, not ``set_epoch``'s: under several processes Trainer's ``set_epoch`` does not reach
    a sampler behind accelerate's shard and skip wrappers on a resumed epoch."""

    def __init__(self, epoch_ids: Callable[[], torch.Tensor], num_samples: int) -> None:
        self.epoch_ids, self.num_samples = epoch_ids, int(num_samples)

    def set_epoch(self, epoch: int) -> None:
        return None

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_ids().tolist())

    def __len__(self) -> int:
        return self.num_samples


def global_epoch_order(plan_ids: torch.Tensor, *, seed: int, epoch: int, step_samples: int, world_size: int):
    """The plan shuffled by (seed, epoch) and padded to whole optimiser steps on every rank
    (`step_samples` per rank and step)."""
    return shard_plan(plan_ids, seed=seed, epoch=epoch, rank=0, world_size=1, multiple=step_samples * world_size)


def scoring_shares(num_samples: int, rank: int, world_size: int, batch_size: int) -> Iterator[tuple[list[int], int]]:
    """This rank's batches of a scoring pass over every sample: ``(ids, real)`` where the first
    `real` ids are this rank's own and the rest repeat its first ones, so every rank runs the
    same number of forwards (a sharded model's forward is a collective)."""
    own = list(range(rank, num_samples, world_size))
    per_rank = -(-num_samples // world_size)
    batches = -(-per_rank // batch_size)
    padded = (own * (-(-batches * batch_size // max(len(own), 1))))[: batches * batch_size] if own else []
    for b in range(batches):
        ids = padded[b * batch_size : (b + 1) * batch_size]
        real = max(0, min(batch_size, len(own) - b * batch_size))
        yield ids, real
