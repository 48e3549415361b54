"""``denoise``: leave out the samples that look mislabelled, fill the epoch from the rest.

A wrong answer on a skill the model has learned shows as a high perplexity the model is
confident about: high loss, low entropy (Q-Tuning's Q2). On the embedded task the study found
the wrong answers there, and found that the paper's within-batch min-max normalisation hides
them behind a few extreme perplexities, while ranks over the whole statistics store separate them.
So after ``warmup_epochs`` epochs on all the data, each epoch (before any fine-tuning neither
score says anything about noise, and the first epoch's scores drift with the model as it
learns the format within that epoch, so only a later epoch's scores decide; a suspect is not
trained again, so an early wrong call would stick):

1. ranks every sample's last loss and last mean entropy over the store (ranks in [0, 1]);
2. scores suspicion s = rank(loss) − ``entropy_weight`` · rank(entropy) and leaves out the
   ``suspect_fraction`` of the scored samples with the highest s. ``auto`` (the default)
   estimates that share once, at the first decision, as the share of samples whose mean
   label-token probability on the last warm-up epoch was below ``auto_label_prob``: by then
   the model gives well under half its probability to most wrong answers and more than half
   to nearly every clean one, so the count follows the noise (a few per cent on clean data)
   while the ranks choose which samples. It is kept for the run, because a count re-estimated
   every epoch shrinks as the wrong answers left in are memorised, which releases suspects to
   be memorised in turn;
3. draws ⌊``keep_ratio`` · N⌋ samples uniformly from the rest (all of them when fewer).

The scores come from the training forward of each sample's previous visit (the statistics store),
so no scoring pass is ever run. A sample with no score yet (NaN) is never a suspect. This is
qtune's own policy, not a published method; docs/strategies.md says why it is built this way.
"""

from __future__ import annotations

from typing import Literal

import torch

from .base import EpochContext, EpochPlan, PruningStrategy, check_ratio, epoch_generator
from .counting import check_fraction, check_warmup, first_mask, floor_count, nan_last_order, order_key
from .registry import register_strategy

_SALT = 0xDE


def unit_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks of the finite entries scaled to [0, 1] (ties by index, NaN stays NaN); a single
    finite entry gets rank 0.5. One integer sort of x, NaN last: its first entries are the
    finite ones in rank order, so no gather of the finite entries is needed."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten().cpu()
    out = torch.full_like(x, float("nan"))
    k = int(torch.count_nonzero(~torch.isnan(x)))
    if k:
        ranked = nan_last_order(x, descending=False)[:k]
        out[ranked] = torch.arange(k, dtype=torch.float64) / (k - 1) if k > 1 else 0.5
    return out


def suspicion(loss: torch.Tensor, entropy: torch.Tensor, entropy_weight: float) -> torch.Tensor:
    """rank(loss) − w·rank(entropy): high for confident (low-entropy) high-loss samples; NaN
    where either score is missing."""
    loss = torch.as_tensor(loss, dtype=torch.float64).flatten()
    entropy = torch.as_tensor(entropy, dtype=torch.float64).flatten()
    missing = torch.isnan(loss) | torch.isnan(entropy)
    unknown = int(torch.count_nonzero(missing))
    if int(torch.count_nonzero(torch.isnan(loss))) != unknown:  # else NaN exactly there already
        loss = loss.masked_fill(missing, float("nan"))
    if int(torch.count_nonzero(torch.isnan(entropy))) != unknown:
        entropy = entropy.masked_fill(missing, float("nan"))
    return unit_ranks(loss).sub_(unit_ranks(entropy).mul_(float(entropy_weight)))


def estimated_noise_share(p_label: torch.Tensor, below: float) -> float:
    """Share of the scored samples (finite ``p_label``) whose mean label-token probability is
    below ``below``; 0 when none is scored."""
    p = torch.as_tensor(p_label, dtype=torch.float64).flatten()
    scored = int(torch.count_nonzero(~torch.isnan(p)))
    return float(torch.count_nonzero(p < below)) / scored if scored else 0.0


def denoise_plan(
    loss: torch.Tensor,
    entropy: torch.Tensor,
    keep_ratio: float,
    suspect_fraction: float,
    entropy_weight: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ascending kept ids, ascending suspect ids) for one epoch.

    Cost: the two rank sorts of ``suspicion`` (integer sorts), then O(N): the suspects are a
    selection (``first_mask``), not a third sort, and the kept ids come back ascending from a
    mask rather than from sorting them.
    """
    s = suspicion(loss, entropy, entropy_weight)
    n = s.numel()
    scored = int(torch.count_nonzero(~torch.isnan(s)))
    suspect = first_mask(order_key(s, descending=True), floor_count(suspect_fraction, scored))
    pool = torch.nonzero(~suspect).flatten()
    k = min(pool.numel(), max(1, floor_count(keep_ratio, n)))
    kept = torch.zeros(n, dtype=torch.bool)
    kept[pool[torch.randperm(pool.numel(), generator=generator)[:k]]] = True
    return torch.nonzero(kept).flatten(), torch.nonzero(suspect).flatten()


@register_strategy("denoise")
class Denoise(PruningStrategy):
    statistics = ("loss", "entropy", "p_label")
    ratio_keys = {"keep_ratio": "keep", "suspect_fraction": "shift"}

    def __init__(
        self,
        seed: int = 0,
        keep_ratio: float = 0.5,
        suspect_fraction: float | Literal["auto"] = "auto",
        auto_label_prob: float = 0.5,
        entropy_weight: float = 0.5,
        warmup_epochs: int = 2,
    ) -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.keep_ratio")
        if suspect_fraction == "auto":
            self.suspect_fraction = "auto"
        elif isinstance(suspect_fraction, str):
            raise ValueError(f"strategy.suspect_fraction={suspect_fraction!r} must be a fraction in [0, 1) or auto")
        else:
            self.suspect_fraction = check_fraction(suspect_fraction, "strategy.suspect_fraction")
        self.auto_label_prob = check_fraction(
            auto_label_prob, "strategy.auto_label_prob", allow_zero=False, allow_one=True
        )
        if float(entropy_weight) < 0:
            raise ValueError(f"strategy.entropy_weight={entropy_weight} must be >= 0")
        self.entropy_weight = float(entropy_weight)
        self.warmup_epochs = check_warmup(warmup_epochs)
        self._auto_share: float | None = None  # estimated at the first decision, then kept

    def warmup_cost(self) -> dict[str, int]:
        return {"epochs": self.warmup_epochs, "scoring_passes": 0}

    def epoch_plan(self, ctx: EpochContext) -> EpochPlan:
        n = ctx.num_samples
        if ctx.epoch < self.warmup_epochs:
            return EpochPlan(
                torch.arange(n), info={"planned_keep_ratio": 1.0, "warmup": 1, "suspects": 0, "suspect_fraction": 0.0}
            )
        fraction = self.suspect_fraction
        if fraction == "auto":
            if self._auto_share is None:
                self._auto_share = estimated_noise_share(ctx.scores.p_label, self.auto_label_prob)
            fraction = self._auto_share
        kept, suspects = denoise_plan(
            ctx.scores.loss,
            ctx.scores.entropy,
            self.keep_ratio,
            fraction,
            self.entropy_weight,
            epoch_generator(self.seed, ctx.epoch, _SALT),
        )
        return EpochPlan(
            kept,
            info={
                "planned_keep_ratio": kept.numel() / max(1, n),
                "warmup": 0,
                "suspects": int(suspects.numel()),
                "suspect_fraction": fraction,
            },
        )

    def state_dict(self) -> dict:
        return {**super().state_dict(), "auto_share": self._auto_share}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._auto_share = state.get("auto_share")
