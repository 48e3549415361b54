"""``full``: every sample, every epoch. The baseline every other strategy is measured against."""

from __future__ import annotations

import torch

from .base import EpochContext, EpochPlan, PruningStrategy
from .registry import register_strategy


@register_strategy("full")
class FullData(PruningStrategy):
    def epoch_plan(self, ctx: EpochContext) -> EpochPlan:
        return EpochPlan(torch.arange(ctx.num_samples))
