"""``ccs``: coverage-centric coreset selection (Zheng et al., §7).

Keeping only the hardest samples collapses at high pruning rates because the subset stops
covering the easy, typical regions. CCS first cuts the β hardest (likely mislabelled) samples,
then spreads the budget over equal-width score strata, filling the smallest strata first, so
dense easy regions and sparse hard ones are both represented. Static: chosen once after the
warm-up (or at epoch 0 from a scores file), fixed afterwards.
"""

from __future__ import annotations

import torch

from .base import EpochContext, check_ratio, epoch_generator
from .counting import check_fraction, floor_count, nan_last_order, check_skip_plus_keep, check_warmup
from .registry import register_strategy
from .scores_file import load_scores
from .static_subset import StaticSubset

_SALT = 0xCC5
# score name → sign that makes "higher = harder"
SCORE_SIGNS = {"el2n": 1.0, "loss": 1.0, "entropy": 1.0, "forgetting": 1.0, "aum": -1.0}


def stratum_budgets(counts: list[int], budget: int) -> list[int]:
    """b_j per stratum: visit strata by count ascending (ties by index), b_j = min(n_j,
    ⌊budget_left / strata_left⌋), so small strata are taken whole and the rest flows upward."""
    order = sorted(range(len(counts)), key=lambda j: (counts[j], j))
    out = [0] * len(counts)
    left = int(budget)
    for pos, j in enumerate(order):
        b = min(int(counts[j]), left // (len(counts) - pos))
        out[j] = b
        left -= b
    return out


def select_ccs(
    scores: torch.Tensor, keep_ratio: float, beta: float, num_bins: int = 50, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Ascending indices of a ⌊keep_ratio·N⌋ coreset (at least 1); higher score = harder.

    Drops the ⌊β·N⌋ hardest (ties: lower index counts as harder), splits the remaining scores'
    range [min, max] into ``num_bins`` equal-width half-open bins (the last one closed), gives
    each bin ``stratum_budgets`` and samples uniformly inside it. NaN scores are neither cut nor
    binned; they only top the coreset up, uniformly, when the scored pool is too small.
    ``generator=None`` means a fixed seed 0 (never the global RNG). Cost: one integer sort of
    the N scores, then O(N): each bin is a slice of the sorted pool.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    s = torch.as_tensor(scores, dtype=torch.float64).flatten().cpu()
    n = s.numel()
    m = min(n, max(1, floor_count(keep_ratio, n)))  # never an empty coreset
    cut = floor_count(beta, n)
    order = nan_last_order(s, descending=True)
    scored = int(torch.count_nonzero(~torch.isnan(s)))  # NaN sorts last: the scored ids are order[:scored]
    pool = order[min(cut, scored) : scored]
    chosen = torch.zeros(n, dtype=torch.bool)
    if pool.numel() <= m:
        chosen[pool] = True
    else:
        vals = s[pool]
        lo, hi = float(vals.min()), float(vals.max())
        edges = torch.linspace(lo, hi, num_bins + 1, dtype=torch.float64)
        if hi > lo:
            bins = torch.bucketize(vals, edges[1:-1], right=True)
        else:
            bins = torch.zeros(pool.numel(), dtype=torch.long)
        counts = torch.bincount(bins, minlength=num_bins).tolist()
        # the pool is in descending score order, so its bins descend too: bin j is one slice
        # of the pool, in the same order as ``pool[bins == j]``, found without a pass per bin
        ends = [0] * num_bins
        top = 0
        for j in reversed(range(num_bins)):
            top += counts[j]
            ends[j] = top
        for j, b in enumerate(stratum_budgets(counts, m)):
            if b:
                members = pool[ends[j] - counts[j] : ends[j]]
                chosen[members[torch.randperm(members.numel(), generator=generator)[:b]]] = True
    short = m - int(torch.count_nonzero(chosen))
    if short > 0:
        unknown = torch.nonzero(torch.isnan(s)).flatten()
        chosen[unknown[torch.randperm(unknown.numel(), generator=generator)[:short]]] = True
    return torch.nonzero(chosen).flatten()


@register_strategy("ccs")
class CCS(StaticSubset):
    """Full data for ``warmup_epochs``, then the static coreset.

    ``score_column``: el2n | loss | entropy (fresh scoring pass at the end of the warm-up), aum |
    forgetting (training dynamics recorded during the warm-up epochs), or any of them read from
    ``scores_file`` (column of the same name). AUM is negated (low margin = hard).
    """

    statistics = ("el2n",)  # the instance's: its ``score_column`` option
    renamed_options = {"score": "score_column"}  # EL2N's name for the same choice
    ratio_keys = {"keep_ratio": "keep", "beta": "shift"}

    def __init__(
        self,
        seed: int = 0,
        keep_ratio: float = 0.5,
        beta: float = 0.1,
        num_bins: int = 50,
        score_column: str = "el2n",
        warmup_epochs: int = 1,
        scores_file: str | None = None,
    ) -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.keep_ratio")
        self.beta = check_fraction(beta, "strategy.beta")
        check_skip_plus_keep(
            self.beta,
            "strategy.beta",
            self.keep_ratio,
            "after cutting the hardest samples too few remain to fill the coreset",
        )
        self.num_bins = int(num_bins)
        if self.num_bins < 1:
            raise ValueError(f"strategy.num_bins={num_bins} must be >= 1")
        if score_column not in SCORE_SIGNS:
            raise ValueError(f"strategy.score_column={score_column!r}; choose one of {sorted(SCORE_SIGNS)}")
        self.score_column = score_column
        self.statistics = (score_column,)
        self.warmup_epochs = check_warmup(warmup_epochs)
        self.scores_file = scores_file

    def warmup_cost(self) -> dict[str, int]:
        if self.scores_file:
            return {"epochs": 0, "scoring_passes": 0}
        dynamic = self.score_column in ("aum", "forgetting")  # read from training, no scoring pass
        return {"epochs": self.warmup_epochs, "scoring_passes": 0 if dynamic else 1}

    def needs_scoring_pass(self, ctx: EpochContext) -> bool:
        dynamic = self.score_column in ("aum", "forgetting")
        return self._selected is None and not self.scores_file and not dynamic and ctx.epoch == self.warmup_epochs

    def _scores(self, ctx: EpochContext) -> torch.Tensor:
        if self.scores_file:
            raw = load_scores(self.scores_file, ctx.num_samples, self.score_column)
        else:
            st = ctx.scores
            raw = getattr(st, self.score_column).detach().float().cpu().clone()
            if self.score_column in ("aum", "forgetting"):
                raw[st.seen_epoch < 0] = float("nan")  # never trained: no dynamics recorded
        return SCORE_SIGNS[self.score_column] * raw

    def select(self, ctx: EpochContext) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self._scores(ctx)
        g = epoch_generator(self.seed, ctx.epoch, _SALT)
        selected = select_ccs(scores, self.keep_ratio, self.beta, self.num_bins, g)
        return selected, {
            "scored_samples": int(torch.count_nonzero(torch.isfinite(scores))),
            "cutoff": floor_count(self.beta, ctx.num_samples),
            "topped_up_unscored": int(torch.count_nonzero(torch.isnan(scores[selected]))),
        }
