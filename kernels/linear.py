"""`linear_token_stats`: the statistics straight from hidden states and the LM-head weight.

Tokens are processed in chunks; each chunk's logits (chunk x V) exist only while that chunk's
statistics are taken, so peak extra memory is O(chunk * V) instead of N x V. The forward keeps
only lse per token. The backward recomputes each chunk's logits and forms
d loss / d logits = (softmax - onehot) * g with the *per-token* upstream gradient g before
reducing into grad_weight. That ordering is what keeps grad_weight right under non-uniform
per-token loss weights; Liger's fused linear CE summed over tokens in the forward and scaled by
one scalar in backward, which was silently wrong for reduction='none' until v0.8.2. The price
is one extra matmul per chunk in backward. Ignored tokens are dropped before the matmuls.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .autograd import backend_grad
from .dispatch import call_with_fallback, is_auto, resolve_backend, working_impl
from .logits import check_labels
from .reference import TokenStats


def default_chunk(n: int) -> int:
    """About N/16 tokens per chunk, a multiple of 64 (64 at least): one chunk of logits is
    ~6 % of N x V. Smaller chunks save memory but pay per-chunk overhead (on 2 CPU cores at
    4096 x 32000: N/32 chunks took 1.57x matmul + stats, N/8 chunks 1.2x)."""
    return max(64, -(-n // 16 // 64) * 64)


def _accumulate_grad_w(gw, dz, h):
    """gw (fp32) += dz^T h. For bf16/fp16 on CUDA the GEMM itself outputs fp32 (torch >= 2.8
    `out_dtype`), which avoids a low-precision V x H product and its upcast per chunk."""
    if dz.dtype == torch.float32:
        return gw.addmm_(dz.t(), h)
    if dz.is_cuda:
        try:
            return torch.addmm(gw, dz.t(), h, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            pass  # a torch without `out_dtype` for this GEMM: the upcast path below is correct
    return gw.add_((dz.t() @ h).float())


class LinearStatsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, y, impl, chunk, fallback=False):
        n = h.shape[0]
        outs = [torch.zeros(n, device=h.device) for _ in range(7)]
        ones = torch.ones(min(chunk, n), dtype=torch.bool, device=h.device)
        for r in range(0, n, chunk):
            sl = slice(r, r + chunk)
            logits = F.linear(h[sl], w, b)
            for o, part in zip(outs, impl.stats(logits, y[sl], ones[: logits.shape[0]])):
                o[sl] = part
            del logits  # else the next chunk's logits are allocated while these are alive
        ctx.impl, ctx.chunk, ctx.fallback = impl, chunk, fallback
        ctx.save_for_backward(h, w, b, y, outs[-1])
        ctx.mark_non_differentiable(*outs[1:])
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss, *_):
        h, w, b, y, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if g_loss is None:
            return None, None, None, None, None, None, None
        with torch.autocast(h.device.type, enabled=False):  # recompute exactly the forward's
            return LinearStatsFunction._backward(ctx, h, w, b, y, lse, g_loss, need_h, need_w, need_b)

    @staticmethod
    def _backward(ctx, h, w, b, y, lse, g_loss, need_h, need_w, need_b):
        g = g_loss.float().contiguous()
        chunk = ctx.chunk
        gh = torch.empty_like(h) if need_h else None
        gw = torch.zeros(w.shape, device=w.device) if need_w else None  # fp32 accumulator
        gb = torch.zeros(w.shape[0], device=w.device) if (need_b and b is not None) else None
        ones = torch.ones(min(chunk, h.shape[0]), dtype=torch.bool, device=h.device)
        for r in range(0, h.shape[0], chunk):
            sl = slice(r, r + chunk)
            logits = F.linear(h[sl], w, b)
            # the gradient overwrites the recomputed logits: one chunk x V buffer, not two
            impl = working_impl(ctx.impl, h.device.type, ctx.fallback)
            dz = backend_grad(impl, ctx.fallback, logits, y[sl], ones[: logits.shape[0]], lse[sl], g[sl], out=logits)
            del logits
            if gh is not None:
                torch.mm(dz, w, out=gh[sl])
            if gw is not None:
                gw = _accumulate_grad_w(gw, dz, h[sl])
            if gb is not None:
                gb += dz.float().sum(0)
            del dz
        gw = gw.to(w.dtype) if gw is not None else None
        gb = gb.to(b.dtype) if gb is not None else None
        return gh, gw, gb, None, None, None, None


def linear_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    bias: torch.Tensor | None = None,
    backend: str | None = None,
    chunk_size: int | None = None,
) -> TokenStats:
    """Same outputs as `token_stats(hidden @ weight.T + bias, labels)` without the N x V logits.

    hidden [..., H], weight [V, H], labels [...] (already shifted). `chunk_size` = tokens per
    chunk (default `default_chunk(N)`); smaller saves memory, larger feeds the matmul better.
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} differ")
    name = resolve_backend(backend, hidden.device)
    dev = hidden.device.type
    no_autocast = contextlib.nullcontext()
    if torch.is_autocast_enabled(dev):
        # The backward recomputes the logits, possibly outside autocast (Lightning's mixed
        # precision runs it outside): cast once here, as autocast would for F.linear, so that
        # forward and backward multiply the same tensors; gradients flow back through the casts.
        dt = torch.get_autocast_dtype(dev)
        hidden, weight = hidden.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
        no_autocast = torch.autocast(dev, enabled=False)
    h2 = hidden.reshape(-1, hidden.shape[-1])
    lab = labels.reshape(-1)
    valid = lab != ignore_index
    check_labels(lab, valid, weight.shape[0])
    n = lab.numel()
    if name == "reference" or n == 0:
        from .reference import token_stats_reference

        return token_stats_reference(F.linear(hidden, weight, bias), labels, ignore_index)
    idx = None if bool(valid.all()) else valid.nonzero().squeeze(1)
    if idx is not None:  # drop ignored tokens before any matmul
        h2, lab = h2.index_select(0, idx), lab.index_select(0, idx)
    rows = [torch.zeros(n, device=hidden.device) for _ in range(6)]
    if not lab.numel():
        # nothing supervised: a zero loss still connected to hidden, weight and bias, so their
        # gradients are zeros (not None, which DDP would reject), and built from empty slices,
        # so a NaN in an ignored position's hidden state cannot reach it
        rows[0] = rows[0] + sum(t.reshape(-1)[:0].sum().float() for t in (h2, weight, bias) if t is not None)
    else:
        chunk = int(chunk_size or default_chunk(lab.numel()))
        h2, lab = h2.contiguous(), lab.long()
        auto = is_auto(backend)
        with no_autocast:
            out = call_with_fallback(
                lambda impl: LinearStatsFunction.apply(h2, weight, bias, lab, impl, chunk, auto),
                name,
                dev,
                fallback=auto,
            )
        if idx is None:
            rows = list(out[:6])
        else:
            z = torch.zeros(n, device=hidden.device)
            rows = [z.index_put((idx,), o) for o in out[:6]]
    loss, ent, el2n, p_y, correct, margin = (r.view(labels.shape) for r in rows)
    return TokenStats(loss, ent, el2n, p_y, correct, margin, valid.view(labels.shape))
