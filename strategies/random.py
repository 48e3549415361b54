"""``random``: a fresh uniform subset of ``keep_ratio``·N samples every epoch, or with
``static: true`` one subset drawn once and kept for the whole run.

The subset is drawn from a private generator seeded by (seed, epoch) (epoch 0 for the static
form), so it is the same on every rank and after a resume. The static form is the baseline RS2
is judged against: a fixed random subset of the same size (RS2, §4). (RS2 without replacement,
which guarantees coverage across epochs, is the ``rs2`` strategy.)
"""

from __future__ import annotations

import torch

from .base import EpochContext, EpochPlan, PruningStrategy, check_ratio, epoch_generator
from .registry import register_strategy


def random_subset(num_samples: int, keep_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Ascending ids of a uniform subset of max(1, round(keep_ratio·N)) samples."""
    k = max(1, round(keep_ratio * num_samples)) if num_samples else 0
    return torch.randperm(num_samples, generator=generator)[:k].sort().values


@register_strategy("random")
class RandomSubset(PruningStrategy):
    ratio_keys = {"keep_ratio": "keep"}
    statistics = ()  # reads no scores

    def __init__(self, seed: int = 0, keep_ratio: float = 0.5, static: bool = False) -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.keep_ratio")
        self.static = bool(static)

    def epoch_plan(self, ctx: EpochContext) -> EpochPlan:
        draw_epoch = 0 if self.static else ctx.epoch
        ids = random_subset(ctx.num_samples, self.keep_ratio, epoch_generator(self.seed, draw_epoch))
        return EpochPlan(ids, info={"planned_keep_ratio": self.keep_ratio})
