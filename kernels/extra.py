"""`token_extra_stats`: the optional statistics of the token rules, computed only when asked.

Top-K entropy (EAFT's gate, no gradient) and the per-token KL between the policy's and a
reference model's distributions (ASFT's anchor, differentiable with respect to the policy's
logits; the reference is frozen). Separate from `token_stats` so the common path pays nothing
for them and `TokenStats` keeps its shape.

Backends: "reference" is the naive formula (`extra_reference`); every other backend runs the
chunked PyTorch path here: rows in chunks of about 2M elements, the KL's backward recomputed
chunk by chunk from the saved logits (no N x V tensor kept between forward and backward).
"triton" and "compiled" have no kernel of their own for these outputs yet and fall back to
this chunked path explicitly (it runs on the logits' device, CUDA included). The fused
LM-head counterpart is `linear_extra.linear_extra_stats`.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .dispatch import resolve_backend
from .extra_formula import KL_DIRECTIONS, kl_grad_rows, kl_rows, topk_entropy_rows
from .extra_reference import ExtraStats, extra_stats_reference
from .torch_chunked import chunk_rows


def _step(z: torch.Tensor, rows: int | None) -> int:
    return rows or chunk_rows(z.shape[1]) * (16 if z.device.type == "cuda" else 1)


def topk_entropy_chunked(z: torch.Tensor, valid: torch.Tensor, k: int, rows: int | None = None) -> torch.Tensor:
    """fp32 [n]: top-K entropy of each row of z [n, V]; 0 where not ``valid``."""
    out = torch.zeros(z.shape[0], device=z.device)
    step = _step(z, rows)
    for r in range(0, z.shape[0], step):
        out[r : r + step] = topk_entropy_rows(z[r : r + step].detach(), k)
    return torch.where(valid, out, torch.zeros_like(out))


class KLFunction(torch.autograd.Function):
    """Per-row KL in forward, its gradient with respect to the policy's logits in backward, both
    chunked; ignored rows give 0 and a zero gradient (even with NaN logits there)."""

    @staticmethod
    def forward(ctx, z, zr, valid, direction, rows):
        out = torch.zeros(z.shape[0], device=z.device)
        step = _step(z, rows)
        for r in range(0, z.shape[0], step):
            out[r : r + step] = kl_rows(z[r : r + step], zr[r : r + step], direction)
        out = torch.where(valid, out, torch.zeros_like(out))
        ctx.direction, ctx.rows = direction, rows
        ctx.save_for_backward(z, zr, valid, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        z, zr, valid, kl = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        g = torch.where(valid, g.float(), torch.zeros_like(kl))
        dz = torch.zeros_like(z)
        step = _step(z, ctx.rows)
        for r in range(0, z.shape[0], step):
            sl = slice(r, r + step)
            d = kl_grad_rows(z[sl].detach(), zr[sl], ctx.direction, kl[sl], g[sl])
            dz[sl] = torch.where(valid[sl].unsqueeze(1), d, torch.zeros_like(d)).to(z.dtype)
        return dz, None, None, None, None


def token_extra_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    *,
    top_k: int | None = None,
    ref_logits: torch.Tensor | None = None,
    kl_direction: str = "ref_policy",
    backend: str | None = None,
    rows: int | None = None,
) -> ExtraStats:
    """Top-K entropy (with ``top_k``) and KL to the reference (with ``ref_logits``, same shape as
    ``logits``; ``kl_direction`` "ref_policy" = KL(ref || policy), ASFT's, or "policy_ref") per
    token, fp32 with the labels' shape, 0 where ignored; a field not asked for is None. ``rows``
    pins the chunk height (tests use it to force several chunks)."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    if ref_logits is not None and ref_logits.shape != logits.shape:
        raise ValueError(f"ref_logits {tuple(ref_logits.shape)} and logits {tuple(logits.shape)} differ")
    if kl_direction not in KL_DIRECTIONS:
        raise ValueError(f"kl_direction={kl_direction!r}; choose one of {KL_DIRECTIONS}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be a positive integer")
    name = resolve_backend(backend, logits.device)
    if name == "reference" or labels.numel() == 0:
        return extra_stats_reference(logits, labels, ignore_index, top_k, ref_logits, kl_direction)
    v = logits.shape[-1]
    z2 = logits.reshape(-1, v)
    valid = labels.reshape(-1) != ignore_index
    ent = kl = None
    if top_k is not None:
        ent = topk_entropy_chunked(z2, valid, int(top_k), rows).view(labels.shape)
    if ref_logits is not None:
        zr = ref_logits.detach().reshape(-1, v)
        kl = KLFunction.apply(z2, zr, valid, kl_direction, rows).view(labels.shape)
    return ExtraStats(ent, kl)
