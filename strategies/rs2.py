"""``rs2``: repeated random sampling (Okanovic et al., §5).

Each epoch ("round") trains on a fresh random r·N subset, so over several rounds the model sees
most of the data while each round costs r of a full epoch, and selection costs nothing. Without
replacement (the paper's main variant) the rounds walk one random permutation, so every sample
is seen once per ⌈1/r⌉ rounds. The plan is a pure function of (N, r, seed, round): no state to
checkpoint, identical on every rank and after a resume.
"""

from __future__ import annotations

import torch

from .base import EpochContext, EpochPlan, PruningStrategy, check_ratio, epoch_generator
from .counting import round_count
from .registry import register_strategy

_SALT = 0x5253  # "RS": keeps RS2's streams apart from other strategies' with the same seed


def _perm(num_samples: int, seed: int, cycle: int) -> torch.Tensor:
    return torch.randperm(num_samples, generator=epoch_generator(seed, cycle, salt=_SALT))


def rs2_plan(num_samples: int, keep_ratio: float, epoch: int, seed: int, replacement: bool = False) -> torch.Tensor:
    """Ascending sample ids of round ``epoch``: max(1, round(keep_ratio·N)) distinct ids.

    Without replacement: rounds take consecutive slices of permutation 0, then 1, … When a round
    needs more ids than the current permutation has left, it takes that tail and fills up with
    the first ids of the next permutation that are not in the tail; those are removed from the
    next permutation, whose remaining ids (tail ids included) are walked in order. So a round
    never repeats an id and each permutation still covers every id exactly once (the official
    code instead re-takes the head of the exhausted permutation). With replacement: each round
    is an independent uniform subset.
    """
    n = int(num_samples)
    if n <= 0:
        return torch.zeros(0, dtype=torch.long)
    s = min(n, max(1, round_count(keep_ratio, n)))
    if replacement:
        g = epoch_generator(seed, epoch, salt=_SALT + 1)
        return torch.randperm(n, generator=g)[:s].sort().values
    cycle = 0
    queue = _perm(n, seed, cycle)
    cursor = 0
    plan = queue[:0]
    for _ in range(int(epoch) + 1):
        left = queue.numel() - cursor
        if left >= s:
            plan = queue[cursor : cursor + s]
            cursor += s
            continue
        tail = queue[cursor:]
        cycle += 1
        fresh = _perm(n, seed, cycle)
        in_tail = torch.zeros(n, dtype=torch.bool)
        in_tail[tail] = True
        free_pos = torch.nonzero(~in_tail[fresh]).flatten()[: s - tail.numel()]
        plan = torch.cat([tail, fresh[free_pos]])
        rest = torch.ones(n, dtype=torch.bool)
        rest[free_pos] = False
        queue, cursor = fresh[rest], 0
    return plan.sort().values


@register_strategy("rs2")
class RS2(PruningStrategy):
    """A fresh ``keep_ratio`` subset each epoch; the LR schedule should span the steps run."""

    ratio_keys = {"keep_ratio": "keep"}
    statistics = ()  # reads no scores

    def __init__(self, seed: int = 0, keep_ratio: float = 0.1, replacement: bool = False) -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.keep_ratio")
        self.replacement = bool(replacement)

    def epoch_plan(self, ctx: EpochContext) -> EpochPlan:
        ids = rs2_plan(ctx.num_samples, self.keep_ratio, ctx.epoch, self.seed, self.replacement)
        return EpochPlan(
            ids,
            info={
                "planned_keep_ratio": self.keep_ratio,
                "realised_keep_ratio": ids.numel() / max(1, ctx.num_samples),
            },
        )
