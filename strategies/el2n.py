"""``el2n``: static pruning to the hardest samples by early-training EL2N (Data Diet, §6).

Samples the model still gets wrong after a short warm-up carry the information; easy ones are
redundant. After ``warmup_epochs`` full epochs a no-grad scoring pass gives each sample its
token-mean EL2N (mean over response tokens of ‖softmax − onehot‖₂); the ``keep_ratio`` highest,
after skipping the top ``offset`` (likely label noise), form a fixed subset for the rest of the
run. Training continues from the warm-up weights (cheaper than the paper's restart).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import EpochContext, check_ratio
from .counting import check_fraction, ranked_slice, round_count, check_skip_plus_keep, check_warmup
from .registry import register_strategy
from .scores_file import load_scores
from .static_subset import StaticSubset


def select_el2n(scores: torch.Tensor, keep_ratio: float, offset: float = 0.0) -> torch.Tensor:
    """Ascending indices of the round(keep_ratio·N) highest scores after skipping the top
    round(offset·N).

    NaN scores (never seen, no response tokens) rank below every real score, so they are kept
    only when the budget exceeds the scored samples. Ties: lower index ranks higher. At least
    one sample is kept; if the offset would push the window past the end it is shifted back so
    the kept count is still met. Two O(N) selections (``ranked_slice``), no sort of N scores.
    """
    scores = torch.as_tensor(scores).flatten()
    n = scores.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    k = min(n, max(1, round_count(keep_ratio, n)))
    start = min(round_count(offset, n), n - k)
    return ranked_slice(scores, start, start + k, descending=True)


@register_strategy("el2n")
class EL2N(StaticSubset):
    """Full data during warm-up, then the static EL2N subset.

    With ``score_passes`` = P > 1 the scores are averaged over scoring passes at the ends of the
    last P warm-up epochs (epochs W−P+1 … W), a single-run stand-in for the paper's average over
    independent runs. With ``scores_file`` the subset is chosen at epoch 0 from the file.
    """

    statistics = ("el2n",)
    ratio_keys = {"keep_ratio": "keep", "offset": "shift"}

    def __init__(
        self,
        seed: int = 0,
        keep_ratio: float = 0.5,
        offset: float = 0.0,
        warmup_epochs: int = 1,
        score_passes: int = 1,
        scores_file: str | None = None,
        score_column: str = "el2n",
    ) -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.keep_ratio")
        self.offset = check_fraction(offset, "strategy.offset")
        check_skip_plus_keep(
            self.offset, "strategy.offset", self.keep_ratio, "the kept window would run past the easiest sample"
        )
        self.warmup_epochs = check_warmup(warmup_epochs)
        self.score_passes = int(score_passes)
        if not (1 <= self.score_passes <= self.warmup_epochs + 1):
            raise ValueError(
                f"strategy.score_passes={score_passes} must be in [1, warmup_epochs + 1 = "
                f"{self.warmup_epochs + 1}] (one pass at the end of each of the last warm-up epochs)"
            )
        self.scores_file = scores_file
        self.score_column = str(score_column)
        self._sum: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        self._scored_epochs: list[int] = []

    def warmup_cost(self) -> dict[str, int]:
        if self.scores_file:
            return {"epochs": 0, "scoring_passes": 0}
        return {"epochs": self.warmup_epochs, "scoring_passes": self.score_passes}

    def needs_scoring_pass(self, ctx: EpochContext) -> bool:
        if self.scores_file or self._selected is not None:
            return False
        first = self.warmup_epochs - self.score_passes + 1
        return first <= ctx.epoch <= self.warmup_epochs

    def observe(self, ctx: EpochContext) -> None:
        """Add this epoch's fresh scoring pass to the running mean (once per epoch)."""
        if self.scores_file or not self.needs_scoring_pass(ctx) or ctx.epoch in self._scored_epochs:
            return  # the same epoch planned twice (e.g. after a resume) must not count twice
        vals = ctx.scores.el2n.detach().float().cpu()
        if self._sum is None:
            self._sum = torch.zeros(ctx.num_samples, dtype=torch.float64)
            self._count = torch.zeros(ctx.num_samples, dtype=torch.long)
        ok = torch.isfinite(vals)
        self._sum[ok] += vals[ok].double()
        self._count[ok] += 1
        self._scored_epochs.append(int(ctx.epoch))

    def _scores(self, ctx: EpochContext) -> torch.Tensor:
        if self.scores_file:
            return load_scores(self.scores_file, ctx.num_samples, self.score_column)
        mean = self._sum / self._count.clamp(min=1)
        return mean.masked_fill(self._count == 0, float("nan")).float()

    def select(self, ctx: EpochContext) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self._scores(ctx)
        selected = select_el2n(scores, self.keep_ratio, self.offset)
        kept = scores[selected]
        finite = torch.isfinite(kept)
        return selected, {
            "scored_samples": int(torch.count_nonzero(torch.isfinite(scores))),
            "score_passes_done": len(self._scored_epochs),
            "kept_score_min": float(kept[finite].min()) if finite.any() else float("nan"),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "sum": self._sum,
            "count": self._count,
            "scored_epochs": list(self._scored_epochs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._sum, self._count = state.get("sum"), state.get("count")
        self._scored_epochs = list(state.get("scored_epochs", []))
