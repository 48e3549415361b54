"""Token rule ``asft``: Anchored SFT (arXiv 2509.23753): DFT plus a KL anchor to the frozen base.

DFT's reweighting drifts: with nothing holding the distribution, probability mass leaves the
base model's support. ASFT adds kl_weight·KL(p_ref || p_θ) over the full vocabulary per token,
averaged over the response tokens like the DFT term: L = mean_t sg(p_θ(y_t))·ℓ_t +
kl_weight·mean_t KL_t (the official ``asft`` mode and LLaMA-Factory's ``use_asft_loss``).
kl_weight = 0.1 (both defaults; the examples also use 0.05). The KL must carry the policy's
gradient: the engine computes it from the policy's and the reference's logits
(``qtune.kernels.token_extra_stats`` with ``kl_direction="ref_policy"``).
"""

from __future__ import annotations

import torch

from .token_base import TokenDecision, TokenInputs, TokenRule, decision
from .token_dft import dft_weights
from .token_registry import register_token_rule


def asft_kl_term(kl: torch.Tensor, response_mask: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """[B, T]: kl_weight·KL_t on response tokens, 0 elsewhere (keeps the gradient)."""
    return torch.where(response_mask.bool(), kl * float(kl_weight), torch.zeros((), dtype=kl.dtype, device=kl.device))


@register_token_rule("asft")
class AsftTokens(TokenRule):
    kind = "reweight"
    statistics = ("loss", "p_label")
    normalizer = "response"
    reference_kl = "ref_policy"

    def __init__(self, seed: int = 0, kl_weight: float = 0.1) -> None:
        super().__init__(seed)
        if not float(kl_weight) >= 0:
            raise ValueError(f"strategy.token.kl_weight={kl_weight!r} must be >= 0")
        self.kl_weight = float(kl_weight)

    def apply(self, inputs: TokenInputs) -> TokenDecision:
        p, kl = self.require(inputs, "p_label", "kl")
        resp = inputs.response_mask
        return decision(
            dft_weights(p, resp), resp, "response", reweights=True, extra=asft_kl_term(kl, resp, self.kl_weight)
        )
