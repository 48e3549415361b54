"""The training loss: mean over kept, unmasked response tokens.

Per-sample weights (InfoBatch) rescale a sample's token contributions while the denominator
stays the unweighted count of kept tokens (token-mean form), so with all weights 1 and no mask
the loss is exactly the plain token-mean cross entropy.
"""

from __future__ import annotations

import torch


def masked_token_mean(
    token_loss: torch.Tensor,
    token_mask: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
    denominator: torch.Tensor | None = None,
) -> torch.Tensor:
    """``token_loss`` [B, T], ``token_mask`` [B, T] (bool or float), ``sample_weights`` [B]
    or already spread over the tokens [B, T] (a packed batch: ``SegmentMap.per_position``).

    ``denominator`` replaces the count of kept tokens (Q-Tuning's official code divides by all
    attended tokens of the micro-batch, so pruning also shrinks the loss scale)."""
    mask = token_mask.to(token_loss.dtype)
    weighted = token_loss * mask
    if sample_weights is not None:
        w = sample_weights.to(token_loss.dtype)
        weighted = weighted * (w if w.dim() == token_loss.dim() else w.unsqueeze(-1))
    # clamp keeps an all-masked batch at loss 0 (with a zero gradient) instead of NaN
    denom = mask.sum() if denominator is None else denominator.to(token_loss.dtype)
    return weighted.sum() / denom.clamp(min=1.0)
