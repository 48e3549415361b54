"""Q-Tuning's decision rules as pure tensor functions (§2.3–2.4).

Sample stage: place each sample on the error–uncertainty plane (PPL, entropy), find by bisection
one quantile level a so the two informative quadrants hold about ``sample_ratio`` of the batch,
then top up by |PPL~ − Ent~| if too few survive. Token stage: inside "misconception" rows drop
the response tokens whose own and neighbours' perplexity is highest (locally noisy spans).

Everything is written without host synchronisation (no ``.item()``, no data-dependent Python
branches), so it runs on the batch's device inside the training step; scalars come back as
0-dim tensors.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

NORMALIZE = ("minmax", "rank")


def _kept_table(kept_quadrants: Iterable[int], device) -> torch.Tensor:
    table = torch.zeros(5, dtype=torch.bool, device=device)
    for q in kept_quadrants:
        table[int(q)] = True
    return table


def _round_half_even(x: torch.Tensor) -> torch.Tensor:
    """Python ``round`` on a tensor, with near-halves snapped first (see counting.round_count)."""
    return torch.round(torch.round(x, decimals=9))


def _sorted_finite(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x sorted ascending with NaN moved last (as +inf), and the count of non-NaN entries."""
    nan = torch.isnan(x)
    return torch.sort(torch.where(nan, torch.inf, x)).values, (~nan).sum()


def _quantile(sorted_x: torch.Tensor, n: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """numpy/torch 'linear' quantile of the first n sorted entries: lerp at rank q·(n − 1),
    the same arithmetic as ``torch.nanquantile``, without re-sorting for every level."""
    rank = q * torch.clamp(n - 1, min=0).to(q.dtype)
    below, above = torch.floor(rank).long(), torch.ceil(rank).long()
    return torch.lerp(sorted_x[below], sorted_x[above], rank - below.to(q.dtype))


def _quadrants(ppl, ent, sp, np_, se, ne, a) -> torch.Tensor:
    p_lo, p_hi = _quantile(sp, np_, a), _quantile(sp, np_, 1.0 - a)
    e_lo, e_hi = _quantile(se, ne, a), _quantile(se, ne, 1.0 - a)
    hi_p, lo_p = ppl > p_hi, ppl <= p_lo
    lo_e, hi_e = ent <= e_lo, ent > e_hi
    quad = torch.zeros(ppl.shape, dtype=torch.long, device=ppl.device)
    quad = torch.where(hi_p & hi_e, 1, quad)
    quad = torch.where(hi_p & lo_e, 2, quad)
    quad = torch.where(lo_p & lo_e, 3, quad)
    quad = torch.where(lo_p & hi_e, 4, quad)
    return torch.where(torch.isnan(ppl) | torch.isnan(ent), 0, quad)


def quadrants_at(ppl: torch.Tensor, ent: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
    """Quadrant of each sample (1..4; 0 = middle band or no signal) at quantile level ``a``.

    numpy-style linear quantiles over the non-NaN samples; the code's comparisons:
    Q2 = PPL > P_hi & Ent ≤ E_lo, Q4 = PPL ≤ P_lo & Ent > E_hi, Q1 = PPL > P_hi & Ent > E_hi,
    Q3 = PPL ≤ P_lo & Ent ≤ E_lo, with P_lo/E_lo at level a and P_hi/E_hi at level 1 − a.
    """
    ppl, ent = ppl.to(torch.float64), ent.to(torch.float64)
    a = torch.as_tensor(a, dtype=torch.float64, device=ppl.device)
    return _quadrants(ppl, ent, *_sorted_finite(ppl), *_sorted_finite(ent), a)


def normalize_scores(x: torch.Tensor, how: str = "minmax") -> torch.Tensor:
    """Within-batch normalisation of the finite entries to [0, 1] (NaN stays NaN).

    ``minmax`` (the code's): (x − min)/(max − min), all zeros if constant. ``rank``: average
    rank/(n − 1), so a few extreme perplexities cannot squash everyone else towards 0.
    """
    if how not in NORMALIZE:
        raise ValueError(f"normalize={how!r}; choose one of {NORMALIZE}")
    x = x.to(torch.float64)
    valid = torch.isfinite(x)
    if how == "minmax":
        lo = torch.where(valid, x, torch.inf).min()
        hi = torch.where(valid, x, -torch.inf).max()
        span = hi - lo
        out = torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(x))
    else:
        key = torch.where(valid, x, torch.inf)
        uniq, inverse, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
        before = torch.cumsum(counts, 0) - counts
        avg_rank = before.to(torch.float64) + (counts.to(torch.float64) - 1) / 2
        n = valid.sum().to(torch.float64)
        out = avg_rank[inverse] / torch.clamp(n - 1, min=1.0)
    return torch.where(valid, out, torch.nan)


def like_quadrant(ppl: torch.Tensor, ent: torch.Tensor, normalize: str = "minmax") -> torch.Tensor:
    """2 ("Q2-like": PPL~ ≥ Ent~) or 4 ("Q4-like") per sample: what a fill-up sample counts as."""
    p, e = normalize_scores(ppl, normalize), normalize_scores(ent, normalize)
    return torch.where(p >= e, 2, 4)


def split_samples(
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
    """(keep bool[B], quadrant long[B] with 1..4 for Q1..Q4 and 0 for the middle band, alpha).

    Bisection over a ∈ [0, 0.49]: f = |kept quadrants|/B; stop when |f − ratio| < tol, f < ratio
    raises the lower end (wider thresholds), else lowers the upper end; at most ``max_iter``
    midpoints, the last one is used. Then, if fewer than K = max(1, round(B·ratio)) are kept,
    the remaining samples with the largest |PPL~ − Ent~| are added (only those whose
    ``like_quadrant`` is kept). Never removes: the kept count can exceed K. Samples with a
    non-finite PPL or entropy (no response tokens) are excluded from everything, B included.
    ``kept_quadrants`` generalises the code's (2, 4) for configurable quadrant policies.
    """
    ppl = torch.as_tensor(ppl).to(torch.float64).flatten()
    ent = torch.as_tensor(ent).to(torch.float64).flatten().to(ppl.device)
    valid = torch.isfinite(ppl) & torch.isfinite(ent)
    ppl = torch.where(valid, ppl, torch.nan)
    ent = torch.where(valid, ent, torch.nan)
    table = _kept_table(kept_quadrants, ppl.device)
    n = valid.sum().to(torch.float64)
    ratio = float(sample_ratio)

    sorted_stats = (*_sorted_finite(ppl), *_sorted_finite(ent))
    lo = torch.zeros((), dtype=torch.float64, device=ppl.device)
    hi = torch.full((), 0.49, dtype=torch.float64, device=ppl.device)
    alpha = torch.zeros((), dtype=torch.float64, device=ppl.device)
    done = torch.zeros((), dtype=torch.bool, device=ppl.device)
    for _ in range(int(max_iter)):
        # Equivalent to the code's early ``break``: once done, nothing changes any more.
        a = (lo + hi) / 2
        f = table[_quadrants(ppl, ent, *sorted_stats, a)].sum() / torch.clamp(n, min=1.0)
        alpha = torch.where(done, alpha, a)
        hit = (f - ratio).abs() < tol
        move = ~(done | hit)
        lo = torch.where(move & (f < ratio), a, lo)
        hi = torch.where(move & (f >= ratio), a, hi)
        done = done | hit
    quad = _quadrants(ppl, ent, *sorted_stats, alpha)
    keep = table[quad] & valid
    if fill_up:
        target = torch.clamp(_round_half_even(n * ratio), min=1.0)
        need = torch.clamp(target - keep.sum(), min=0)
        p_n, e_n = normalize_scores(ppl, normalize), normalize_scores(ent, normalize)
        like = torch.where(p_n >= e_n, 2, 4)
        eligible = valid & ~keep & table[like]
        u = torch.where(eligible, (p_n - e_n).abs(), -torch.inf)
        order = torch.sort(u, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        keep = keep | (eligible & (rank < need))
    return keep, quad, alpha


def smoothed_token_scores(
    token_ppl: torch.Tensor, response_mask: torch.Tensor, lam: float = 0.5, context_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """s_t = (1 − λ)·PPL_t + λ·(PPL_{t−1} + PPL_{t+1}) on response tokens (−inf elsewhere).

    Neighbours outside the sequence or not in the response count 0; with ``context_mask``
    (the code's behaviour) attended non-response neighbours count 1 = exp(0), since the code
    gives ignored positions a loss of 0. NaN PPL counts as +inf (dropped first).
    """
    resp = response_mask.bool()
    ppl = torch.nan_to_num(token_ppl.to(torch.float64), nan=torch.inf)
    fill = torch.zeros_like(ppl)
    if context_mask is not None:
        fill = torch.where(context_mask.bool(), 1.0, 0.0).to(ppl)
    nb = torch.where(resp, ppl, fill)
    left = torch.nn.functional.pad(nb[:, :-1], (1, 0))
    right = torch.nn.functional.pad(nb[:, 1:], (0, 1))
    s = (1.0 - lam) * ppl + lam * (left + right)
    return torch.where(resp, s, -torch.inf)


def _rank_desc(key: torch.Tensor) -> torch.Tensor:
    """Rank of each entry along the last dim by value descending; ties: earlier position first."""
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    pos = torch.arange(key.shape[-1], device=key.device).expand_as(order)
    rank.scatter_(-1, order, pos)
    return rank


def token_mask(
    token_ppl: torch.Tensor, response_mask: torch.Tensor, prune_rows: torch.Tensor, token_ratio: float, lam: float = 0.5
) -> torch.Tensor:
    """bool[B, T], True = the token stays in the loss (per-sample budget, the paper's reading).

    Rows outside ``prune_rows`` keep every response token. A prune row keeps
    max(1, ⌈token_ratio·|R_i|⌉) response tokens and drops those with the highest s_t (ties: the
    earlier token is dropped first). Non-response positions are always False.
    """
    resp = response_mask.bool()
    if float(token_ratio) >= 1.0:
        return resp.clone()
    s = smoothed_token_scores(token_ppl, resp, lam)
    n_resp = resp.sum(-1).to(torch.float64)
    keep_n = torch.clamp(torch.ceil(torch.round(n_resp * float(token_ratio), decimals=9)), min=1.0)
    drop_n = torch.clamp(n_resp - keep_n, min=0) * prune_rows.to(resp.device).bool()
    drop = resp & (_rank_desc(s) < drop_n.unsqueeze(-1))
    return resp & ~drop


def token_mask_batch_code(
    token_ppl: torch.Tensor,
    response_mask: torch.Tensor,
    attention_mask: torch.Tensor | None,
    keep: torch.Tensor,
    prune_rows: torch.Tensor,
    sample_ratio: float,
    token_ratio: float,
    lam: float = 0.5,
) -> torch.Tensor:
    """The official code's batch-level token budget (``token_budget: batch_code``, §2.4 item 7).

    N_all = attended positions of the micro-batch (prompt + response, every row); target kept =
    round(N_all·r_sample·r_token); D = N_all − target − (attended positions of dropped rows),
    clamped to [0, #candidates], is taken from the prune rows' response tokens with the highest
    s_t across the whole batch (attended prompt neighbours count 1, as in the code).
    """
    resp = response_mask.bool()
    if float(token_ratio) >= 1.0:
        return resp.clone()
    att = resp if attention_mask is None else attention_mask.bool()
    keep = keep.to(resp.device).bool()
    s = smoothed_token_scores(token_ppl, resp, lam, context_mask=att)
    n_all = att.sum().to(torch.float64)
    target = _round_half_even(n_all * float(sample_ratio) * float(token_ratio))
    removed = (att & ~keep.unsqueeze(-1)).sum()
    cand = resp & (prune_rows.to(resp.device).bool() & keep).unsqueeze(-1)
    d = torch.clamp(n_all - target - removed, min=0)
    d = torch.minimum(d, cand.sum().to(torch.float64))
    key = torch.where(cand, s, -torch.inf).flatten()
    drop = cand & (_rank_desc(key) < d).view_as(cand)
    return resp & ~drop
