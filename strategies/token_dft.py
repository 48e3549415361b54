"""Token rule ``dft``: Dynamic Fine-Tuning (arXiv 2508.05629, Eq. 9).

SFT's gradient is a policy gradient with an implicit reward 1/π(y_t): tokens the model finds
unlikely get huge updates. DFT multiplies each token's NLL by its own probability, stopped from
the gradient, L = −Σ_t sg(π(y_t))·log π(y_t), which cancels that factor. No reference model, no
knob. Normalisation as the official code and TRL: the weighted sum divided by the number of
response tokens of the micro-batch (``normalizer: response``).
Deviation: TRL divides by the tokens of the whole accumulated batch (``num_items_in_batch``);
here each micro-batch is its own mean.
"""

from __future__ import annotations

import torch

from .token_base import TokenDecision, TokenInputs, TokenRule, decision
from .token_registry import register_token_rule


def dft_weights(p_label: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """float32 [B, T]: sg(p(y_t)) on response tokens, 0 elsewhere."""
    return torch.where(response_mask.bool(), p_label.detach().float(), torch.zeros((), device=p_label.device))


@register_token_rule("dft")
class DftTokens(TokenRule):
    kind = "reweight"
    statistics = ("loss", "p_label")
    normalizer = "response"

    def apply(self, inputs: TokenInputs) -> TokenDecision:
        (p,) = self.require(inputs, "p_label")
        return decision(dft_weights(p, inputs.response_mask), inputs.response_mask, "response", reweights=True)
