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
from .qtuning_rules import _quadrants, _quantile, _round_half_even, normalize_scores

_FLIP = 0x7FFF_FFFF_FFFF_FFFF


def sorted_finite(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (float64, NaN for no signal) sorted ascending with NaN last, and its non-NaN count.

    The quantiles read only the first count entries, which equal those of a float sort (a
    -0.0 may read as +0.0, which no comparison tells apart)."""
    keys = torch.sort(order_key(x, descending=False)).values
    count = int((~torch.isnan(x)).sum())
    bits = torch.where(keys < 0, keys ^ _FLIP, keys)
    values = bits.view(torch.float64).clone()
    values[count:] = torch.inf
    return values, torch.tensor(count)


def _kept_count(ppl, ent, sp, np_, se, ne, a, kept: tuple[int, ...]) -> torch.Tensor:
    """How many samples fall in the kept quadrants at level ``a`` (``_quadrants`` summed)."""
    p_lo, p_hi = _quantile(sp, np_, a), _quantile(sp, np_, 1.0 - a)
    e_lo, e_hi = _quantile(se, ne, a), _quantile(se, ne, 1.0 - a)
    hi_p = ppl > p_hi if (1 in kept or 2 in kept) else None
    lo_p = ppl <= p_lo if (3 in kept or 4 in kept) else None
    hi_e = ent > e_hi if (1 in kept or 4 in kept) else None
    lo_e = ent <= e_lo if (2 in kept or 3 in kept) else None
    pairs = {1: (hi_p, hi_e), 2: (hi_p, lo_e), 3: (lo_p, lo_e), 4: (lo_p, hi_e)}
    total = torch.zeros((), dtype=torch.long)
    for q in kept:  # NaN compares False: a sample without signal is in no quadrant
        p, e = pairs[q]
        total = total + (p & e).sum()
    return total


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
    """``split_samples``' (keep, quadrant, alpha) plus ``like_quadrant`` (2 or 4 per sample),
    for CPU tensors; the same arithmetic on the same sorted values, so the same result."""
    ppl = torch.as_tensor(ppl).to(torch.float64).flatten().cpu()
    ent = torch.as_tensor(ent).to(torch.float64).flatten().cpu()
    valid = torch.isfinite(ppl) & torch.isfinite(ent)
    ppl = torch.where(valid, ppl, torch.nan)
    ent = torch.where(valid, ent, torch.nan)
    kept = tuple(sorted({int(q) for q in kept_quadrants}))
    table = torch.zeros(5, dtype=torch.bool)
    table[list(kept)] = True
    n = valid.sum().to(torch.float64)
    ratio = float(sample_ratio)

    sorted_stats = (*sorted_finite(ppl), *sorted_finite(ent))
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
    keep = table[quad] & valid
    p_n, e_n = normalize_scores(ppl, normalize), normalize_scores(ent, normalize)
    like = torch.where(p_n >= e_n, 2, 4)
    if fill_up:
        target = torch.clamp(_round_half_even(n * ratio), min=1.0)
        need = int(torch.clamp(target - keep.sum(), min=0))
        eligible = valid & ~keep & table[like]
        if need > 0:
            # eligible gaps are finite and >= 0, the rest -inf: the first ``need`` of the
            # order (gap descending, lower id first) are the ones split_samples ranks < need
            u = torch.where(eligible, (p_n - e_n).abs(), -torch.inf)
            keep = keep | (eligible & first_mask(order_key(u, descending=True), need))
    return keep, quad, alpha, like
