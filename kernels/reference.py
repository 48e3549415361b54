"""Naive PyTorch statistics: the reference every backend is tested against.

Deliberately written the obvious way (full log_softmax, softmax, scatter), so that it shares
no code with the fused backends it checks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class TokenStats(NamedTuple):
    loss: torch.Tensor  # NLL, differentiable w.r.t. the logits
    entropy: torch.Tensor
    el2n: torch.Tensor  # ||softmax - onehot||_2
    p_label: torch.Tensor
    correct: torch.Tensor  # float 0/1, argmax == label
    margin: torch.Tensor  # p_label - max_{v != label} p_v
    valid: torch.Tensor  # bool, label != ignore_index


def token_stats_reference(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, backend: str = "auto"
) -> TokenStats:
    """Obvious formula (several N x V temporaries); `backend` is accepted and ignored."""
    z = logits.float()
    valid = labels != ignore_index
    y = labels.masked_fill(~valid, 0).unsqueeze(-1)
    logp = F.log_softmax(z, dim=-1)
    p = logp.exp()
    logp_y = logp.gather(-1, y).squeeze(-1)
    p_y = logp_y.exp()
    ent = -torch.where(p > 0, p * logp, 0.0).sum(-1)  # 0 * log 0 = 0 (logits of -inf)
    # ||p - onehot||^2 = sum_{v != y} p_v^2 + (1 - p_y)^2, with 1 - p_y summed from the other
    # classes' probabilities: p_y - 1 itself would lose every digit near p_y = 1
    p_other = p.scatter(-1, y, 0.0)
    el2n = (p_other.square().sum(-1) + p_other.sum(-1).square()).sqrt()
    correct = (z.argmax(-1) == labels).float()
    other = p.scatter(-1, y, 0.0).amax(-1)  # probabilities >= 0: an empty max (V = 1) is 0
    zero = torch.zeros_like(p_y)
    return TokenStats(
        loss=torch.where(valid, -logp_y, zero),
        entropy=torch.where(valid, ent, zero).detach(),
        el2n=torch.where(valid, el2n, zero).detach(),
        p_label=torch.where(valid, p_y, zero).detach(),
        correct=torch.where(valid, correct, zero),
        margin=torch.where(valid, p_y - other, zero).detach(),
        valid=valid,
    )
