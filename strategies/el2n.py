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

from .base import EpochContext, EpochPlan, PruningStrategy, check_ratio
from .counting import check_fraction, nan_last_order, round_count
from .registry import register_strategy
from .scores_file import load_scores


def select_el2n(scores: torch.Tensor, keep_ratio: float, offset: float = 0.0) -> torch.Tensor:
    """Ascending indices of the round(keep_ratio·N) highest scores after skipping the top
    round(offset·N).

    NaN scores (never seen, no response tokens) rank below every real score, so they are kept
    only when the budget exceeds the scored samples. Ties: lower index ranks higher. At least
    one sample is kept; if the offset would push the window past the end it is shifted back so
    the kept count is still met.
    """
    scores = torch.as_tensor(scores).flatten()
    n = scores.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    k = min(n, max(1, round_count(keep_ratio, n)))
    start = min(round_count(offset, n), n - k)
    order = nan_last_order(scores, descending=True)
    return order[start : start + k].sort().values


@register_strategy("el2n")
class EL2N(PruningStrategy):
    """Full data during warm-up, then the static EL2N subset.

    With ``score_passes`` = P > 1 the scores are averaged over scoring passes at the ends of the
    last P warm-up epochs (epochs W−P+1 … W), a single-run stand-in for the paper's average over
    independent runs. With ``scores_file`` the subset is chosen at epoch 0 from the file.
    """

    def __init__(self, seed: int = 0, keep_ratio: float = 0.5, offset: float = 0.0,
                 warmup_epochs: int = 1, score_passes: int = 1, scores_file: str | None = None,
                 score_column: str = "el2n") -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.keep_ratio")
        self.offset = check_fraction(offset, "strategy.offset")
        if self.offset + self.keep_ratio > 1.0 + 1e-9:
            raise ValueError(
                f"strategy.offset ({self.offset}) + strategy.keep_ratio ({self.keep_ratio}) > 1: "
                "the kept window would run past the easiest sample"
            )
        self.warmup_epochs = int(warmup_epochs)
        if self.warmup_epochs < 0:
            raise ValueError(f"strategy.warmup_epochs={warmup_epochs} must be >= 0")
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
        self._selected: torch.Tensor | None = None
        self._info: dict[str, float] = {}

    @property
    def select_epoch(self) -> int:
        return 0 if self.scores_file else self.warmup_epochs

    def needs_scoring_pass(self, ctx: EpochContext) -> bool:
        if self.scores_file or self._selected is not None:
            return False
        first = self.warmup_epochs - self.score_passes + 1
        return first <= ctx.epoch <= self.warmup_epochs

    def _accumulate(self, ctx: EpochContext) -> None:
        if ctx.epoch in self._scored_epochs:
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

    def epoch_plan(self, ctx: EpochContext) -> EpochPlan:
        if self._selected is None:
            if not self.scores_file and self.needs_scoring_pass(ctx):
                self._accumulate(ctx)
            if ctx.epoch < self.select_epoch:
                return EpochPlan(torch.arange(ctx.num_samples),
                                 info={"planned_keep_ratio": 1.0, "warmup": 1})
            scores = self._scores(ctx)
            self._selected = select_el2n(scores, self.keep_ratio, self.offset)
            kept = scores[self._selected]
            self._info = {
                "scored_samples": int(torch.isfinite(scores).sum()),
                "score_passes_done": len(self._scored_epochs),
                "kept_score_min": float(kept[torch.isfinite(kept)].min()) if torch.isfinite(kept).any() else float("nan"),
                "selected_at_epoch": int(ctx.epoch),
            }
        n = max(1, ctx.num_samples)
        return EpochPlan(self._selected.clone(), info={
            "planned_keep_ratio": self.keep_ratio, "realised_keep_ratio": len(self._selected) / n,
            "warmup": 0, **self._info,
        })

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self._sum, "count": self._count, "scored_epochs": list(self._scored_epochs),
                "selected": self._selected, "info": dict(self._info)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sum, self._count = state.get("sum"), state.get("count")
        self._scored_epochs = list(state.get("scored_epochs", []))
        self._selected = state.get("selected")
        self._info = dict(state.get("info", {}))
