"""Token rule ``ppl``: drop the response tokens with the highest neighbour-smoothed perplexity,
s_t = (1 − λ)·PPL_t + λ·(PPL_{t−1} + PPL_{t+1}) (Q-Tuning's token stage, §2; λ = 0 is the plain
"PPL" baseline of its Table 5).

Per sequence it is exactly Q-Tuning's ``token_mask`` applied to every row, so the two share one
implementation; ``scope: batch`` ranks s_t over the whole micro-batch instead. Q-Tuning's text
says high-PPL tokens are pruned while its Algorithm 1 keeps the top scores; qtune follows the
text (and its own Q-Tuning strategy): high s_t is dropped.
"""

from __future__ import annotations

import torch

from .base import check_ratio
from .counting import check_fraction
from .qtuning_rules import smoothed_token_scores, token_mask
from .token_base import TokenDecision, TokenInputs, TokenRule, check_scope, decision, drop_highest
from .token_registry import register_token_rule


def ppl_token_mask(
    token_loss: torch.Tensor, response_mask: torch.Tensor, keep_ratio: float, lam: float = 0.5, scope: str = "sequence"
) -> torch.Tensor:
    """bool[B, T]: response tokens kept after dropping the highest smoothed PPL (float64)."""
    resp = response_mask.bool()
    ppl = token_loss.detach().double().exp()
    if scope == "sequence":
        every_row = torch.ones(resp.shape[0], dtype=torch.bool, device=resp.device)
        return token_mask(ppl, resp, every_row, keep_ratio, lam)
    return drop_highest(smoothed_token_scores(ppl, resp, lam), resp, keep_ratio, scope)


@register_token_rule("ppl")
class PplTokens(TokenRule):
    ratio_keys = {"keep_ratio": "keep"}
    statistics = ("loss",)

    def __init__(self, seed: int = 0, keep_ratio: float = 0.5, lam: float = 0.5, scope: str = "sequence") -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.token.keep_ratio")
        self.lam = check_fraction(lam, "strategy.token.lam", allow_one=True)
        self.scope = check_scope(scope, ("sequence", "batch"), "strategy.token.scope")

    def apply(self, inputs: TokenInputs) -> TokenDecision:
        keep = ppl_token_mask(inputs.loss, inputs.response_mask, self.keep_ratio, self.lam, self.scope)
        return decision(keep.float(), inputs.response_mask, "kept", reweights=False)
