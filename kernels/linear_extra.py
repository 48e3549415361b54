"""`linear_extra_stats`: top-K entropy and the KL to a reference from hidden states and LM-head
weights, without materialising the N x V logits (the fused-head counterpart of
`token_extra_stats`).

Tokens are processed in chunks; each chunk's policy (and reference) logits exist only while
that chunk is reduced. The KL's backward recomputes them chunk by chunk and reduces
d KL / d logits into the gradients of the policy's hidden states, weight and bias, as
`linear_token_stats` does for the loss. The reference's hidden states and weights are frozen
(no gradient). Ignored tokens are dropped before any matmul.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .extra_formula import KL_DIRECTIONS, kl_grad_rows, kl_rows, topk_entropy_rows
from .extra_reference import ExtraStats
from .linear import default_chunk


class LinearKLFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, hr, wr, br, direction, chunk):
        out = torch.zeros(h.shape[0], device=h.device)
        for r in range(0, h.shape[0], chunk):
            sl = slice(r, r + chunk)
            out[sl] = kl_rows(F.linear(h[sl], w, b), F.linear(hr[sl], wr, br), direction)
        ctx.direction, ctx.chunk = direction, chunk
        ctx.save_for_backward(h, w, b, hr, wr, br, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        h, w, b, hr, wr, br, kl = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gh = torch.empty_like(h) if need_h else None
        gw = torch.zeros(w.shape, device=w.device) if need_w else None
        gb = torch.zeros(w.shape[0], device=w.device) if (need_b and b is not None) else None
        g = g.float()
        for r in range(0, h.shape[0], ctx.chunk):
            sl = slice(r, r + ctx.chunk)
            dz = kl_grad_rows(F.linear(h[sl], w, b), F.linear(hr[sl], wr, br), ctx.direction, kl[sl], g[sl])
            if gh is not None:
                gh[sl] = (dz.to(w.dtype) @ w).to(h.dtype)
            if gw is not None:
                gw += dz.t() @ h[sl].float()
            if gb is not None:
                gb += dz.sum(0)
        gw = gw.to(w.dtype) if gw is not None else None
        gb = gb.to(b.dtype) if gb is not None else None
        return gh, gw, gb, None, None, None, None, None


def linear_extra_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    *,
    bias: torch.Tensor | None = None,
    top_k: int | None = None,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    kl_direction: str = "ref_policy",
    chunk_size: int | None = None,
) -> ExtraStats:
    """Same outputs as ``token_extra_stats(hidden @ weight.T + bias, labels, top_k=...,
    ref_logits=ref_hidden @ ref_weight.T + ref_bias)``; the KL is asked for with ``ref_hidden``
    and ``ref_weight`` (the reference's last hidden states [..., H'] and head [V, H'])."""
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} differ")
    if (ref_hidden is None) != (ref_weight is None):
        raise ValueError("the KL needs both ref_hidden and ref_weight")
    if ref_hidden is not None and ref_hidden.shape[:-1] != labels.shape:
        raise ValueError(f"ref_hidden {tuple(ref_hidden.shape)} and labels {tuple(labels.shape)} differ")
    if kl_direction not in KL_DIRECTIONS:
        raise ValueError(f"kl_direction={kl_direction!r}; choose one of {KL_DIRECTIONS}")
    dev = hidden.device.type
    no_autocast = contextlib.nullcontext()
    if torch.is_autocast_enabled(dev):  # cast once, as linear_token_stats: forward = backward
        dt = torch.get_autocast_dtype(dev)
        hidden, weight = hidden.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
        no_autocast = torch.autocast(dev, enabled=False)
    valid = labels.reshape(-1) != ignore_index
    idx = valid.nonzero().squeeze(1)
    h2 = hidden.reshape(-1, hidden.shape[-1]).index_select(0, idx)
    n, m = labels.numel(), idx.numel()
    chunk = int(chunk_size or default_chunk(max(m, 1)))

    def scatter(rows: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, device=hidden.device).index_put((idx,), rows).view(labels.shape)

    ent = kl = None
    with no_autocast:
        if top_k is not None:
            rows = torch.zeros(m, device=hidden.device)
            with torch.no_grad():
                for r in range(0, m, chunk):
                    rows[r : r + chunk] = topk_entropy_rows(F.linear(h2[r : r + chunk], weight, bias), int(top_k))
            ent = scatter(rows)
        if ref_hidden is not None:
            hr = ref_hidden.detach().reshape(-1, ref_hidden.shape[-1]).index_select(0, idx).to(h2.dtype)
            wr = ref_weight.detach().to(weight.dtype)
            br = ref_bias.detach().to(weight.dtype) if ref_bias is not None else None
            rows = LinearKLFunction.apply(h2, weight, bias, hr, wr, br, kl_direction, chunk)
            kl = scatter(rows)
    return ExtraStats(ent, kl)
