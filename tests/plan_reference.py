"""The epoch plans as they were before the scale work: plain, slow, obviously the old behaviour.

Kept apart from the strategies so that tests (``test_plan_equivalence``) and
``scripts/bench_scale_plans.py`` can check that the faster plans are bit-identical to these:
run histories and tests compare plan hashes, so a faster plan must choose the same ids.
"""

from __future__ import annotations

import hashlib

import torch

from qtune.strategies.base import epoch_generator
from qtune.strategies.counting import floor_count, round_count
from qtune.strategies.qtuning_rules import like_quadrant, split_samples


def plan_hash(ids: torch.Tensor) -> str:
    return hashlib.sha1(ids.sort().values.numpy().tobytes()).hexdigest()[:12]


def nan_last_order(scores, descending: bool = True):
    s = scores.detach().double().cpu()
    worst = float("-inf") if descending else float("inf")
    key = torch.where(torch.isnan(s), torch.full_like(s, worst), s)
    order = torch.sort(key, descending=descending, stable=True).indices
    is_nan = torch.isnan(s)[order]
    return torch.cat([order[~is_nan], order[is_nan]])


# -- rs2 ----------------------------------------------------------------------------------------
def _perm(n: int, seed: int, cycle: int) -> torch.Tensor:
    return torch.randperm(n, generator=epoch_generator(seed, cycle, salt=0x5253))


def rs2_plan(num_samples: int, keep_ratio: float, epoch: int, seed: int, replacement: bool = False) -> torch.Tensor:
    n = int(num_samples)
    if n <= 0:
        return torch.zeros(0, dtype=torch.long)
    s = min(n, max(1, round_count(keep_ratio, n)))
    if replacement:
        g = epoch_generator(seed, epoch, salt=0x5253 + 1)
        return torch.randperm(n, generator=g)[:s].sort().values
    cycle, queue, cursor = 0, _perm(n, seed, 0), 0
    plan = queue[:0]
    for _ in range(int(epoch) + 1):
        left = queue.numel() - cursor
        if left >= s:
            plan = queue[cursor : cursor + s]
            cursor += s
            continue
        tail = queue[cursor:]
        cycle += 1
        fresh = _perm(n, seed, cycle)
        in_tail = torch.zeros(n, dtype=torch.bool)
        in_tail[tail] = True
        free_pos = torch.nonzero(~in_tail[fresh]).flatten()[: s - tail.numel()]
        plan = torch.cat([tail, fresh[free_pos]])
        rest = torch.ones(n, dtype=torch.bool)
        rest[free_pos] = False
        queue, cursor = fresh[rest], 0
    return plan.sort().values


# -- el2n ---------------------------------------------------------------------------------------
def select_el2n(scores: torch.Tensor, keep_ratio: float, offset: float = 0.0) -> torch.Tensor:
    scores = torch.as_tensor(scores).flatten()
    n = scores.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    k = min(n, max(1, round_count(keep_ratio, n)))
    start = min(round_count(offset, n), n - k)
    return nan_last_order(scores, descending=True)[start : start + k].sort().values


# -- ccs ----------------------------------------------------------------------------------------
def stratum_budgets(counts: list[int], budget: int) -> list[int]:
    order = sorted(range(len(counts)), key=lambda j: (counts[j], j))
    out, left = [0] * len(counts), int(budget)
    for pos, j in enumerate(order):
        b = min(int(counts[j]), left // (len(counts) - pos))
        out[j] = b
        left -= b
    return out


def select_ccs(scores, keep_ratio, beta, num_bins=50, generator=None) -> torch.Tensor:
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    s = torch.as_tensor(scores, dtype=torch.float64).flatten().cpu()
    n = s.numel()
    m = min(n, max(1, floor_count(keep_ratio, n)))
    cut = floor_count(beta, n)
    order = nan_last_order(s, descending=True)
    known = order[~torch.isnan(s[order])]
    pool = known[cut:]
    if pool.numel() <= m:
        chosen = pool
    else:
        vals = s[pool]
        lo, hi = float(vals.min()), float(vals.max())
        edges = torch.linspace(lo, hi, num_bins + 1, dtype=torch.float64)
        if hi > lo:
            bins = torch.bucketize(vals, edges[1:-1], right=True)
        else:
            bins = torch.zeros(pool.numel(), dtype=torch.long)
        counts = torch.bincount(bins, minlength=num_bins).tolist()
        picks = []
        for j, b in enumerate(stratum_budgets(counts, m)):
            if b:
                members = pool[bins == j]
                picks.append(members[torch.randperm(members.numel(), generator=generator)[:b]])
        chosen = torch.cat(picks) if picks else pool[:0]
    short = m - chosen.numel()
    if short > 0:
        unknown = torch.nonzero(torch.isnan(s)).flatten()
        chosen = torch.cat([chosen, unknown[torch.randperm(unknown.numel(), generator=generator)[:short]]])
    return chosen.sort().values


# -- denoise ------------------------------------------------------------------------------------
def unit_ranks(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64).flatten().cpu()
    out = torch.full_like(x, float("nan"))
    known = torch.nonzero(~torch.isnan(x)).flatten()
    if known.numel():
        order = nan_last_order(x[known], descending=False)
        ranks = torch.empty(known.numel(), dtype=torch.float64)
        ranks[order] = torch.arange(known.numel(), dtype=torch.float64)
        out[known] = ranks / (known.numel() - 1) if known.numel() > 1 else 0.5
    return out


def suspicion(loss, entropy, entropy_weight: float) -> torch.Tensor:
    loss = torch.as_tensor(loss, dtype=torch.float64)
    entropy = torch.as_tensor(entropy, dtype=torch.float64)
    known = ~(torch.isnan(loss) | torch.isnan(entropy))
    loss = torch.where(known, loss, float("nan"))
    entropy = torch.where(known, entropy, float("nan"))
    return unit_ranks(loss) - float(entropy_weight) * unit_ranks(entropy)


def estimated_noise_share(p_label, below: float) -> float:
    p = torch.as_tensor(p_label, dtype=torch.float64).flatten()
    scored = p[~torch.isnan(p)]
    return float((scored < below).sum()) / scored.numel() if scored.numel() else 0.0


def denoise_plan(loss, entropy, keep_ratio, suspect_fraction, entropy_weight, generator):
    s = suspicion(loss, entropy, entropy_weight)
    n = s.numel()
    scored = int((~torch.isnan(s)).sum())
    suspects = nan_last_order(s, descending=True)[: floor_count(suspect_fraction, scored)]
    rest = torch.ones(n, dtype=torch.bool)
    rest[suspects] = False
    pool = torch.nonzero(rest).flatten()
    k = min(pool.numel(), max(1, floor_count(keep_ratio, n)))
    kept = pool[torch.randperm(pool.numel(), generator=generator)[:k]]
    return kept.sort().values, suspects.sort().values


# -- seta ---------------------------------------------------------------------------------------
def seta_groups(losses: torch.Tensor, k: int) -> torch.Tensor:
    import warnings

    import numpy as np

    x = torch.as_tensor(losses, dtype=torch.float64).flatten().cpu().numpy()
    n, k = x.size, int(k)
    groups = np.zeros(n, dtype=np.int64)
    if n == 0 or k <= 1:
        return torch.from_numpy(groups)
    known = ~np.isnan(x)
    vals = x[known]
    distinct = np.unique(vals)
    if distinct.size <= 1:
        for g, chunk in enumerate(np.array_split(np.arange(n), k)):
            groups[chunk] = g
        return torch.from_numpy(groups)
    if distinct.size < k:
        g_known = np.searchsorted(distinct, vals)
    else:
        from sklearn.cluster import KMeans

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = KMeans(n_clusters=k, random_state=0, n_init="auto").fit(vals.reshape(-1, 1)).labels_
        present = np.unique(labels)
        means = np.array([vals[labels == c].mean() for c in present])
        rank = np.empty(int(labels.max()) + 1, dtype=np.int64)
        rank[present[np.argsort(means, kind="stable")]] = np.arange(present.size)
        g_known = rank[labels]
    groups[known] = g_known
    groups[~known] = np.arange(int((~known).sum())) % k
    return torch.from_numpy(groups)


def seta_plan(strategy, ctx) -> tuple[torch.Tensor, dict]:
    """SeTa's (ids, info) for ``ctx``: the old epoch_plan."""
    from qtune.strategies.seta import seta_window

    n = ctx.num_samples
    g = epoch_generator(strategy.seed, ctx.epoch, salt=0x5E7A)
    ids = torch.randperm(n, generator=g)[: floor_count(strategy.keep, n)]
    info: dict = {"planned_keep_ratio": strategy.keep}
    if strategy.annealing(ctx):
        info["annealing"] = 1
    else:
        info["annealing"] = 0
        losses = ctx.scores.loss[ids]
        groups = seta_groups(losses, strategy.k)
        start, stop = seta_window(strategy.k, strategy.w, ctx.epoch)
        info.update({"window_start": start, "window_stop": stop, "unseen": int(torch.isnan(losses).sum())})
        for j in range(strategy.k):
            info[f"group_size_{j}"] = int((groups == j).sum())
        ids = ids[(groups >= start) & (groups < stop)]
    if ids.numel() == 0 and n > 0:
        ids = torch.randint(n, (1,), generator=g)
    info["realised_keep_ratio"] = ids.numel() / max(1, n)
    return ids.sort().values, info


# -- qtuning level=epoch ------------------------------------------------------------------------
def qtuning_epoch(strategy, ppl: torch.Tensor, ent: torch.Tensor):
    """(kept ids, prune_rows bool[N], quadrant counts) of Q-Tuning's old epoch-level plan."""
    keep, quad, alpha = split_samples(
        ppl,
        ent,
        strategy.sample_ratio,
        strategy.tol,
        strategy.max_iter,
        kept_quadrants=strategy.kept_quadrants,
        normalize=strategy.normalize,
        fill_up=strategy.fill_up,
    )
    in_kept = torch.zeros_like(keep)
    for q in strategy.kept_quadrants:
        in_kept |= quad == q
    filled = keep & ~in_kept
    acting = torch.where(filled, like_quadrant(ppl, ent, strategy.normalize), quad)
    prune_rows = torch.zeros_like(keep)
    for q in [q for q, a in strategy.policy.items() if a == "prune"]:
        prune_rows |= acting == q
    counts = {f"q{q}": int((quad == q).sum()) for q in range(1, 5)}
    counts.update(middle=int((quad == 0).sum()), kept=int(keep.sum()), fill_up=int(filled.sum()))
    return torch.nonzero(keep).flatten(), prune_rows & keep, counts, float(alpha)
