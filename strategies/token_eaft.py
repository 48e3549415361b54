"""Token rule ``eaft``: Entropy-Adaptive Fine-Tuning (arXiv 2601.02151, Eq. 2–3).

Tokens where the model is confident (low entropy) yet wrong are where SFT overwrites knowledge
and hurts general ability; EAFT scales each token's NLL by its normalised top-K entropy,
H̃_t = H_t^{top-K}/ln K (the entropy of the renormalised top-K distribution, K = 20, computed on
detached logits), so confident tokens get small updates and uncertain ones full ones.
L = Σ_t H̃_t^α·ℓ_t / (response tokens) with α = 1, the sum/num_items normalisation of the
LLaMA-Factory and axolotl ports (``normalizer: response``).
Deviations: LLaMA-Factory divides by the constant 3.0 instead of ln 20 = 2.996 (0.14 % apart);
``divide_by_log_k: false`` gives axolotl's H^α without the division.
"""

from __future__ import annotations

import math

import torch

from .token_base import TokenDecision, TokenInputs, TokenRule, decision
from .token_registry import register_token_rule


def eaft_weights(
    topk_entropy: torch.Tensor, response_mask: torch.Tensor, top_k: int = 20, alpha: float = 1.0, divide: bool = True
) -> torch.Tensor:
    """float32 [B, T]: (H^{top-K}/ln K)^α on response tokens (H^α without ``divide``), 0 elsewhere."""
    h = topk_entropy.detach().double().clamp(min=0.0)  # rounding can give -1e-7 for a sure token
    if divide:
        h = h / math.log(top_k)
    w = h.pow(float(alpha)).float()
    return torch.where(response_mask.bool(), w, torch.zeros((), device=w.device))


@register_token_rule("eaft")
class EaftTokens(TokenRule):
    kind = "reweight"
    statistics = ("loss", "topk_entropy")
    normalizer = "response"
    top_k = 20

    def __init__(self, seed: int = 0, top_k: int = 20, alpha: float = 1.0, divide_by_log_k: bool = True) -> None:
        super().__init__(seed)
        if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 2:
            raise ValueError(f"strategy.token.top_k={top_k!r} must be an integer >= 2 (ln K divides)")
        if not float(alpha) > 0:
            raise ValueError(f"strategy.token.alpha={alpha!r} must be positive")
        self.top_k, self.alpha, self.divide_by_log_k = int(top_k), float(alpha), bool(divide_by_log_k)

    def apply(self, inputs: TokenInputs) -> TokenDecision:
        (h,) = self.require(inputs, "topk_entropy")
        w = eaft_weights(h, inputs.response_mask, self.top_k, self.alpha, self.divide_by_log_k)
        return decision(w, inputs.response_mask, "response", reweights=True)
