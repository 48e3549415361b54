"""Q-Tuning's sample stage over a whole statistics store (``level: epoch``), in a few passes.

``qtuning_rules.split_samples`` is written for one micro-batch on its device: no host sync, so
it materialises the quadrant of every sample at each of ~10 bisection levels and ranks the
fill-up candidates with a full stable sort. At 1e7 samples that is ~12 s. This version runs on
the CPU once per epoch and may sync, so it gives the same answer (keep, quadrant, alpha, bit for
bit; ``tests/unit/test_plan_equivalence.py`` checks it against the old code) with:

- two integer (radix) sorts for the PPL and entropy quantiles instead of two float sorts;
- per bisection level only the counts of the kept quadrants, never the quadrant tensor;
- one quadrant assignment, at the chosen level;
- the fill-up as a selection of the ``need`` best candidates (``first_mask``), not a sort.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .counting import first_mask, order_key
from .qtuning_rules import _round_half_even, normalize_scores

_FLIP = 0x7FFF_FFFF_FFFF_FFFF


def sorted_keys(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``order_key`` of x (float64, NaN for no signal) sorted ascending, and the non-NaN count:
    ``_sorted_finite`` as integers, so that the sort is a radix sort and only the ~40 entries
    the quantiles read are turned back into floats (a -0.0 may read as +0.0, which no
    comparison tells apart)."""
    return torch.sort(order_key(x, descending=False)).values, torch.count_nonzero(~torch.isnan(x))


def _value(keys: torch.Tensor, count: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Entry i of ``_sorted_finite``'s values (+inf past the non-NaN ones)."""
    k = keys[i]
    v = torch.where(k < 0, k ^ _FLIP, k).view(torch.float64)
    return torch.where(i >= count, torch.inf, v)


def _quantile(keys: torch.Tensor, count: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``qtuning_rules._quantile`` on the sorted keys: the same lerp of the same two values."""
    rank = q * torch.clamp(count - 1, min=0).to(q.dtype)
    below, above = torch.floor(rank).long(), torch.ceil(rank).long()
    return torch.lerp(_value(keys, count, below), _value(keys, count, above), rank - below.to(q.dtype))


def _sides(ppl, ent, sp, np_, se, ne, a, kept=(1, 2, 3, 4)):
    """(PPL > P_hi, PPL <= P_lo, Ent > E_hi, Ent <= E_lo) at level a, as in ``_quadrants``;
    a side no kept quadrant reads is None."""
    p_lo, p_hi = _quantile(sp, np_, a), _quantile(sp, np_, 1.0 - a)
    e_lo, e_hi = _quantile(se, ne, a), _quantile(se, ne, 1.0 - a)
    hi_p = ppl > p_hi if (1 in kept or 2 in kept) else None
    lo_p = ppl <= p_lo if (3 in kept or 4 in kept) else None
    hi_e = ent > e_hi if (1 in kept or 4 in kept) else None
    lo_e = ent <= e_lo if (2 in kept or 3 in kept) else None
    return hi_p, lo_p, hi_e, lo_e


def _kept_count(ppl, ent, sp, np_, se, ne, a, kept: tuple[int, ...]) -> torch.Tensor:
    """How many samples fall in the kept quadrants at level ``a`` (``_quadrants`` summed)."""
    hi_p, lo_p, hi_e, lo_e = _sides(ppl, ent, sp, np_, se, ne, a, kept)
    pairs = {1: (hi_p, hi_e), 2: (hi_p, lo_e), 3: (lo_p, lo_e), 4: (lo_p, hi_e)}
    total = torch.zeros((), dtype=torch.long)
    for q in kept:  # NaN compares False: a sample without signal is in no quadrant
        p, e = pairs[q]
        total = total + torch.count_nonzero(p & e)  # a bool .sum() is 20x slower
    return total


def _quadrants(ppl, ent, sp, np_, se, ne, a) -> torch.Tensor:
    """``qtuning_rules._quadrants`` as int8: the same chain of assignments (a later quadrant
    wins); NaN rows compare False on every side, so they stay 0 without a test."""
    hi_p, lo_p, hi_e, lo_e = _sides(ppl, ent, sp, np_, se, ne, a)
    quad = torch.zeros(ppl.shape, dtype=torch.int8)
    for q, (p, e) in enumerate(((hi_p, hi_e), (hi_p, lo_e), (lo_p, lo_e), (lo_p, hi_e)), start=1):
        quad.masked_fill_(p & e, q)
    return quad


def _normalized(x: torch.Tensor, keys: torch.Tensor, count: torch.Tensor, how: str) -> torch.Tensor:
    """``normalize_scores(x, how)`` for x with NaN on every non-finite row; min-max reads the
    extremes from the sorted keys instead of two passes, and divides in place."""
    if how != "minmax":
        return normalize_scores(x, how)
    if int(count) == 0:
        return torch.full_like(x, torch.nan)
    lo, hi = _value(keys, count, torch.tensor(0)), _value(keys, count, count - 1)
    span = hi - lo
    if not bool(span > 0):
        return torch.zeros_like(x).masked_fill_(torch.isnan(x), torch.nan)
    out = x - lo
    return out.div_(span)


def in_quadrants(quad: torch.Tensor, quadrants) -> torch.Tensor:
    """bool: quad is one of ``quadrants`` (a lookup table without an int64 index pass)."""
    mask = torch.zeros(quad.shape, dtype=torch.bool)
    for q in quadrants:
        mask |= quad == int(q)
    return mask


def split_samples_epoch(
    ppl: torch.Tensor,
    ent: torch.Tensor,
    sample_ratio: float,
    tol: float = 0.01,
    max_iter: int = 10,
    *,
    kept_quadrants: Iterable[int] = (2, 4),
    normalize: str = "minmax",
    fill_up: bool = True,
):
    """``split_samples``' (keep, quadrant as int8, alpha) for CPU tensors, plus ``ppl_like``:
    bool, ``like_quadrant`` is 2. It is None when nothing was filled up, and when PPL and
    entropy are not finite on the same rows (then ``like_quadrant`` normalises each over other
    rows than the sample stage does). The same arithmetic on the same sorted values, so the
    same result."""
    ppl = torch.as_tensor(ppl).to(torch.float64).flatten().cpu()
    ent = torch.as_tensor(ent).to(torch.float64).flatten().cpu()
    fin_p, fin_e = torch.isfinite(ppl), torch.isfinite(ent)
    valid = fin_p & fin_e
    count = int(torch.count_nonzero(valid))
    same_rows = int(torch.count_nonzero(fin_p)) == count == int(torch.count_nonzero(fin_e))
    del fin_p, fin_e
    nan_rows = ppl.numel() - count
    if int(torch.count_nonzero(torch.isnan(ppl))) != nan_rows:  # else already NaN exactly there
        ppl = ppl.masked_fill(~valid, torch.nan)
    if int(torch.count_nonzero(torch.isnan(ent))) != nan_rows:
        ent = ent.masked_fill(~valid, torch.nan)
    kept = tuple(sorted({int(q) for q in kept_quadrants}))
    n = torch.tensor(count, dtype=torch.float64)
    ratio = float(sample_ratio)

    sorted_stats = (*sorted_keys(ppl), *sorted_keys(ent))
    lo = torch.zeros((), dtype=torch.float64)
    hi = torch.full((), 0.49, dtype=torch.float64)
    alpha = torch.zeros((), dtype=torch.float64)
    for _ in range(int(max_iter)):
        a = (lo + hi) / 2
        f = _kept_count(ppl, ent, *sorted_stats, a, kept) / torch.clamp(n, min=1.0)
        alpha = a
        if bool((f - ratio).abs() < tol):
            break  # split_samples' ``done``: nothing changes any more
        if bool(f < ratio):
            lo = a
        else:
            hi = a
    quad = _quadrants(ppl, ent, *sorted_stats, alpha)
    keep = in_quadrants(quad, kept)  # quadrants 1..4 are valid rows only
    need = 0
    if fill_up:
        target = torch.clamp(_round_half_even(n * ratio), min=1.0)
        need = int(torch.clamp(target - torch.count_nonzero(keep), min=0))
    if need == 0:  # nothing is filled up: no row needs its like-quadrant
        return keep, quad, alpha, None
    p_n = _normalized(ppl, *sorted_stats[:2], normalize)
    e_n = _normalized(ent, *sorted_stats[2:], normalize)
    ppl_like = p_n >= e_n
    eligible = valid & ~keep
    if 2 not in kept:
        eligible &= ~ppl_like
    if 4 not in kept:
        eligible &= ppl_like
    # eligible gaps are finite and >= 0, the rest -inf: the first ``need`` of the order (gap
    # descending, lower id first) are the ones split_samples ranks below need
    u = p_n.sub_(e_n).abs_().masked_fill_(~eligible, -torch.inf)
    keep |= eligible & first_mask(order_key(u, descending=True), need)
    return keep, quad, alpha, ppl_like if same_rows else None
