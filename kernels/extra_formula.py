"""Row formulas of the optional statistics token rules ask for: pure math, imports only torch.

Top-K entropy (EAFT): the entropy of the distribution renormalised over the K largest logits,
H^{top-K} = lse_K − Σ_k p_k z_k with p_k = exp(z_k − lse_K). It needs only the K values, not
their indices, so ties among the logits cannot change it.

KL between the policy's distribution p = softmax(z) and a reference's r = softmax(z_ref), per
row, in either direction, and its gradient with respect to z (the reference is frozen):

    "ref_policy"  KL(r || p) = Σ r (log r − log p),   d/dz = (p − r)·g         (ASFT)
    "policy_ref"  KL(p || r) = Σ p (log p − log r),   d/dz = p (log p − log r − KL)·g

Terms with a zero weight (r_v = 0, resp. p_v = 0: logits of −inf) count 0, never NaN.
"""

from __future__ import annotations

import torch

KL_DIRECTIONS = ("ref_policy", "policy_ref")


def topk_entropy_rows(z: torch.Tensor, k: int) -> torch.Tensor:
    """fp32 [n]: entropy of softmax over the min(k, V) largest logits of each row of z [n, V]."""
    top = z.float().topk(min(int(k), z.shape[1]), dim=1).values
    lse = torch.logsumexp(top, dim=1, keepdim=True)
    shifted = top - lse
    p = shifted.exp()
    return -torch.where(p > 0, p * shifted, torch.zeros_like(p)).sum(1)


def kl_rows(z: torch.Tensor, zr: torch.Tensor, direction: str) -> torch.Tensor:
    """fp32 [n]: the per-row KL of ``direction`` between softmax(z) and softmax(zr)."""
    logp = torch.log_softmax(z.float(), dim=1)
    logr = torch.log_softmax(zr.float(), dim=1)
    if direction == "ref_policy":
        w, a, b = logr.exp(), logr, logp
    elif direction == "policy_ref":
        w, a, b = logp.exp(), logp, logr
    else:
        raise ValueError(f"kl_direction={direction!r}; choose one of {KL_DIRECTIONS}")
    return torch.where(w > 0, w * (a - b), torch.zeros_like(w)).sum(1)


def kl_grad_rows(z: torch.Tensor, zr: torch.Tensor, direction: str, kl: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """fp32 [n, V]: d KL / d z scaled per row by g (``kl`` is the forward's value)."""
    logp = torch.log_softmax(z.float(), dim=1)
    p = logp.exp()
    logr = torch.log_softmax(zr.float(), dim=1)
    if direction == "ref_policy":
        d = p - logr.exp()
    else:
        diff = torch.where(p > 0, logp - logr - kl.unsqueeze(1), torch.zeros_like(p))
        d = p * diff
    return d * g.unsqueeze(1)
