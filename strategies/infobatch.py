"""``infobatch``: unbiased soft pruning of well-learned samples (InfoBatch, §4).

Samples whose last loss is below the mean contribute small gradients; dropping all of them would
bias the gradient. Each is dropped with probability r and the survivors' loss is scaled by
1/(1 − r), so the expected gradient of that group is unchanged; samples at or above the mean are
always kept. The first epoch and the last (1 − δ) of the epochs train on the full data with
weights 1.

Loss form (algorithms §1.4): **token-mean** (b). The engine's ``masked_token_mean`` multiplies a
sample's response-token losses by its weight and divides by the unweighted count of kept tokens,
so weights of 1 give exactly the unpruned loss.
"""

from __future__ import annotations

import torch

from .base import EpochContext, EpochPlan, PruningStrategy, check_ratio, epoch_generator
from .counting import check_fraction, floor_count
from .registry import register_strategy

_SALT = 0x1B


def infobatch_plan(
    losses: torch.Tensor, prune_ratio: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ascending kept indices, their weights).

    Well-learned set W = {i : loss_i < mean}; exactly ⌊(1 − r)·|W|⌋ of W, drawn uniformly, are
    kept with weight 1/(1 − r); everyone else is kept with weight 1. NaN losses (never trained,
    or no response tokens) carry no evidence of being learned: they are left out of the mean and
    always kept with weight 1.
    """
    r = check_fraction(prune_ratio, "prune_ratio")
    x = torch.as_tensor(losses, dtype=torch.float64).flatten().cpu()
    n = x.numel()
    known = ~torch.isnan(x)
    keep = torch.ones(n, dtype=torch.bool)
    weights = torch.ones(n, dtype=torch.float32)
    if known.any() and r > 0:
        tau = x[known].mean()
        well = torch.nonzero(known & (x < tau)).flatten()
        m = floor_count(1.0 - r, well.numel())
        chosen = well[torch.randperm(well.numel(), generator=generator)[:m]]
        keep[well] = False
        keep[chosen] = True
        weights[chosen] = 1.0 / (1.0 - r)
    idx = torch.nonzero(keep).flatten()
    return idx, weights[idx]


@register_strategy("infobatch")
class InfoBatch(PruningStrategy):
    statistics = ("loss",)
    ratio_keys = {"prune_ratio": "prune"}

    def __init__(self, seed: int = 0, prune_ratio: float = 0.5, delta: float = 0.875) -> None:
        super().__init__(seed)
        self.prune_ratio = check_fraction(prune_ratio, "strategy.prune_ratio")
        self.delta = check_ratio(delta, "strategy.delta")

    def warmup_cost(self) -> dict[str, int]:
        return {"epochs": 1, "scoring_passes": 0}  # the first epoch has no losses yet

    def full_data(self, ctx: EpochContext) -> bool:
        """First epoch (no losses yet) and annealing epochs (e + 1 > δ·E): all data, weights 1.
        Weights are always reset here, unlike the official code when δ·E is not an integer."""
        return ctx.epoch == 0 or ctx.epoch + 1 > self.delta * ctx.max_epochs

    def epoch_plan(self, ctx: EpochContext) -> EpochPlan:
        n = ctx.num_samples
        if self.full_data(ctx):
            return EpochPlan(
                torch.arange(n),
                torch.ones(n),
                info={
                    "planned_keep_ratio": 1.0,
                    "realised_keep_ratio": 1.0,
                    "annealing": int(ctx.epoch > 0),
                    "well_learned": 0,
                    "upweighted": 0,
                },
            )
        losses = ctx.scores.loss
        idx, w = infobatch_plan(losses, self.prune_ratio, epoch_generator(self.seed, ctx.epoch, _SALT))
        known = ~torch.isnan(losses)
        tau = float(losses[known].double().mean()) if known.any() else float("nan")
        up = int((w > 1).sum())
        well = up + (n - idx.numel())  # |W| = kept-and-upweighted + dropped
        return EpochPlan(
            idx,
            w,
            info={
                "planned_keep_ratio": 1.0 - self.prune_ratio * well / max(1, n),
                "realised_keep_ratio": idx.numel() / max(1, n),
                "annealing": 0,
                "well_learned": well,
                "upweighted": up,
                "threshold": tau,
                "weight": 1.0 / (1.0 - self.prune_ratio),
                "unseen": int((~known).sum()),
            },
        )
