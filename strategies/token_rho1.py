"""Token rule ``rho1``: Selective Language Modeling (Rho-1, arXiv 2404.07965).

Each response token's excess loss L_Δ = L_θ − L_ref (the trained model's NLL minus a reference
model's) says how much the model still has to learn there that a model trained on curated data
already knows; the top k % by L_Δ of the micro-batch's response tokens are trained, the loss a
mean over them (Eq. 4–5). The paper ranks "the tokens in a batch", so ``scope: batch`` is the
default; ``sequence`` ranks within each row. k = 0.6 (its best value in Fig. 9).
Deviation: the paper's batch is 1M tokens; here it is the micro-batch on each rank.
"""

from __future__ import annotations

import torch

from .base import check_ratio
from .token_base import TokenDecision, TokenInputs, TokenRule, check_scope, decision, drop_highest
from .token_registry import register_token_rule


def excess_loss(token_loss: torch.Tensor, ref_loss: torch.Tensor) -> torch.Tensor:
    """L_Δ = L_θ − L_ref per token (float64, detached)."""
    return token_loss.detach().double() - ref_loss.detach().double()


def rho1_token_mask(
    token_loss: torch.Tensor,
    ref_loss: torch.Tensor,
    response_mask: torch.Tensor,
    keep_ratio: float = 0.6,
    scope: str = "batch",
) -> torch.Tensor:
    """bool[B, T]: the ⌈k·n⌉ response tokens with the largest excess loss (ties: later kept)."""
    return drop_highest(-excess_loss(token_loss, ref_loss), response_mask, keep_ratio, scope)


@register_token_rule("rho1")
class Rho1Tokens(TokenRule):
    ratio_keys = {"keep_ratio": "keep"}
    statistics = ("loss",)
    reference_loss = True

    def __init__(self, seed: int = 0, keep_ratio: float = 0.6, scope: str = "batch") -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.token.keep_ratio")
        self.scope = check_scope(scope, ("batch", "sequence"), "strategy.token.scope")

    def apply(self, inputs: TokenInputs) -> TokenDecision:
        (ref,) = self.require(inputs, "ref_loss")
        keep = rho1_token_mask(inputs.loss, ref, inputs.response_mask, self.keep_ratio, self.scope)
        return decision(keep.float(), inputs.response_mask, "kept", reweights=False)
