"""The statistics as a function of a few per-row accumulators: pure math, imports only torch.

Every backend reduces a row of logits z (label y) to the same accumulators, taken about a
reference point m >= z_y (the row max), over the classes other than the label:

    s = sum_{v != y} e_v,   t = sum_{v != y} e_v (z_v - m),   q = sum_{v != y} e_v^2,
    with e_v = exp(z_v - m);   other = max_{v != y} z_v;   correct = [argmax == y]

and `finish_rows` adds the label's own term and turns them into the statistics without
touching the row again (e_y = exp(z_y - m), S = s + e_y):

    lse = m + log S,  loss = lse - z_y,  p_y = e_y / S,  entropy = log S - (t + e_y (z_y - m)) / S,
    el2n = sqrt(q + s^2) / S,  margin = p_y - exp(other - lse).

EL2N is ||p - onehot||^2 = sum_{v != y} p_v^2 + (1 - p_y)^2 with 1 - p_y = s / S: the same
number as the textbook sum_v p_v^2 - 2 p_y + 1, without its cancellation. That form subtracts
terms near 1 and, for a confident token, loses every digit: at p_y = 1 - 1e-4 fp32 backends
disagreed by up to sqrt(eps) = 3e-4 and returned 0 for true values of 1e-4. Leaving the label
out of the sums keeps full relative precision down to EL2N of 1e-30.
Entropy uses t about m (not sum p*z) so that logits of +-1e4 do not cancel catastrophically;
logits of -inf (masked vocabulary entries) enter as -1e30, so e * (z - m) is 0, not NaN.
The backward needs only lse per row: d loss / d z = softmax(z) - onehot(y), recomputed from the
logits, so no N x V tensor is kept between forward and backward.
"""

from __future__ import annotations

import torch

# Per-row outputs of every backend's `stats` (all fp32, shape [n]); lse is kept for backward.
ROW_FIELDS = ("loss", "entropy", "el2n", "p_label", "correct", "margin", "lse")
NEG = -1.0e30  # stands for -inf in z - m: exp gives 0 and 0 * NEG is 0 (0 * -inf is NaN)
TUNE_MIN_ELEMENTS = 1 << 24  # Triton tiles are timed on CUDA for logits at least this big


def finish_rows(m, zy, other, s, t, q, correct, valid):
    """Accumulators over v != y (+ float 0/1 `correct`) -> the 7 row outputs, zeroed where not
    `valid`."""
    zys = (zy - m).clamp_min(NEG)  # a label logit of -inf: e_y = 0 and e_y * zys = 0
    e_y = zys.exp()
    total = s + e_y
    logs = total.log()
    lse = m + logs
    loss = lse - zy
    p_y = e_y / total
    ent = logs - (t + e_y * zys) / total
    el2n = (q + s * s).sqrt() / total
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
    zs = (z - m.unsqueeze(1)).clamp_min(NEG)
    e = torch.where(cols == yy, 0.0, zs.exp())  # the label's term is added in finish_rows
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
