"""The statistics as a function of a few per-row accumulators, plus the autograd wrapper.

Every backend reduces a row of logits z (label y) to the same accumulators, taken about a
reference point m = max_v z_v:

    s = sum_v exp(z_v - m)          t = sum_v exp(z_v - m) * (z_v - m)
    q = sum_v exp(z_v - m)^2        other = max_{v != y} z_v        correct = [argmax == y]

and `finish_rows` turns them into the statistics without touching the row again:

    lse = m + log s,  loss = lse - z_y,  p_y = exp(-loss),  entropy = log s - t / s,
    el2n = sqrt(max(0, q / s^2 - 2 p_y + 1)),  margin = p_y - exp(other - lse).

Entropy uses t about m (not sum p*z) so that logits of +-1e4 do not cancel catastrophically.
The backward needs only lse per row: d loss / d z = softmax(z) - onehot(y), recomputed from the
logits, so no N x V tensor is kept between forward and backward.
"""

from __future__ import annotations

import torch

# Per-row outputs of every backend's `stats` (all fp32, shape [n]); lse is kept for backward.
ROW_FIELDS = ("loss", "entropy", "el2n", "p_label", "correct", "margin", "lse")


def finish_rows(m, zy, other, s, t, q, correct, valid):
    """Accumulators (+ float 0/1 `correct`) -> the 7 row outputs, zeroed where not `valid`."""
    logs = s.log()
    lse = m + logs
    loss = lse - zy
    p_y = torch.exp(-loss)
    ent = logs - t / s
    el2n = (q / (s * s) - 2.0 * p_y + 1.0).clamp_min(0.0).sqrt()
    margin = p_y - torch.exp(other - lse)
    zero = torch.zeros_like(loss)
    return tuple(torch.where(valid, x, zero) for x in (loss, ent, el2n, p_y, correct, margin, lse))


def stats_formula(z, y, valid):
    """Plain row formula on a [n, V] block; `compiled` hands exactly this to Inductor.

    No argmax: y is the first-index argmax (torch's tie rule) iff z_y > max_{v<y} z_v and
    z_y >= max_{v>y} z_v, and those two masked maxima also give `other` for the margin.
    Inductor vectorises masked max reductions but not argmax (measured 128 vs 179 ms at
    4096 x 32000 on 2 cores).
    """
    z = z.float()
    yy = y.unsqueeze(1)
    zy = z.gather(1, yy).squeeze(1)
    cols = torch.arange(z.shape[1], device=z.device)
    lo = torch.where(cols < yy, z, float("-inf")).amax(1)
    hi = torch.where(cols > yy, z, float("-inf")).amax(1)
    other = torch.maximum(lo, hi)
    m = torch.maximum(other, zy)
    zs = z - m.unsqueeze(1)
    e = zs.exp()
    correct = ((zy > lo) & (zy >= hi)).float()
    return finish_rows(m, zy, other, e.sum(1), (e * zs).sum(1), (e * e).sum(1), correct, valid)


def grad_formula(z, y, valid, lse, g):
    """(softmax(z) - onehot(y)) * g per row, in the logits' dtype; zero on ignored rows."""
    cols = torch.arange(z.shape[1], device=z.device)
    p = torch.exp(z.float() - lse.unsqueeze(1))
    d = (p - (cols == y.unsqueeze(1)).float()) * g.unsqueeze(1)
    return torch.where(valid.unsqueeze(1), d, 0.0).to(z.dtype)


def grad_formula_into(z, y, valid, lse, g, out):
    """`grad_formula` written into `out` (which may be `z`: the formula is elementwise)."""
    return out.copy_(grad_formula(z, y, valid, lse, g))


class StatsFunction(torch.autograd.Function):
    """Calls a backend's `stats` in forward and its `grad` in backward (loss is the only
    differentiable output; the gradient is scaled per row by whatever weighted the loss)."""

    @staticmethod
    def forward(ctx, z, y, valid, impl):
        out = impl.stats(z.detach(), y, valid)
        ctx.impl = impl
        ctx.save_for_backward(z, y, valid, out[-1])
        ctx.mark_non_differentiable(*out[1:])
        return out

    @staticmethod
    def backward(ctx, g_loss, *_):
        z, y, valid, lse = ctx.saved_tensors
        if g_loss is None or not ctx.needs_input_grad[0]:
            return None, None, None, None
        dz = ctx.impl.grad(z.detach(), y, valid, lse, g_loss.float().contiguous())
        return dz, None, None, None
