"""Naive PyTorch top-K entropy and KL: the reference the chunked path is tested against.

Written the obvious way over the whole [..., V] tensor with autograd doing the gradient, so it
shares no code with ``extra_formula``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class ExtraStats(NamedTuple):
    """Optional per-token statistics (fp32, the labels' shape, 0 where ignored); None when not
    asked for. Only ``kl`` carries gradient (with respect to the policy's logits)."""

    topk_entropy: torch.Tensor | None
    kl: torch.Tensor | None


def extra_stats_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    top_k: int | None = None,
    ref_logits: torch.Tensor | None = None,
    kl_direction: str = "ref_policy",
) -> ExtraStats:
    valid = labels != ignore_index
    z = logits.float()
    zero = torch.zeros(valid.shape, device=z.device)
    ent = None
    if top_k is not None:
        top = torch.sort(z.detach(), dim=-1, descending=True).values[..., : int(top_k)]
        q = F.softmax(top, dim=-1)
        ent = torch.where(valid, -(q * torch.where(q > 0, q.log(), 0.0)).sum(-1), zero)
    kl = None
    if ref_logits is not None:
        logp = F.log_softmax(z, dim=-1)
        logr = F.log_softmax(ref_logits.detach().float(), dim=-1)
        if kl_direction == "ref_policy":
            terms = torch.where(logr > -torch.inf, logr.exp() * (logr - logp), 0.0)
        else:
            terms = torch.where(logp > -torch.inf, logp.exp() * (logp - logr), 0.0)
        kl = torch.where(valid, terms.sum(-1), zero)
    return ExtraStats(ent, kl)
