"""``seta``: random down-sampling, loss clustering and a sliding easy→hard window (SeTa, §3).

Random keep removes near-duplicates statistically; grouping the survivors by their last training
loss and training on a window of adjacent groups that slides each epoch skips either the easiest
(already learned) or the hardest (not yet learnable) groups, while cycling so every difficulty
level is revisited. The last (1 − δ) of the epochs anneal to a plain random keep to undo the
curriculum's bias. All weights stay 1: SeTa does not rescale the loss.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .base import EpochContext, EpochPlan, PruningStrategy, check_ratio, epoch_generator
from .counting import check_fraction, floor_count
from .registry import register_strategy

_SALT = 0x5E7A
KMEANS_FIT_MAX = 1 << 20  # larger selections fit k-means on this many of their losses


def seta_window(k: int, w: float, iteration: int) -> tuple[int, int]:
    """Half-open range of kept groups: window = round(k·w) (Python rounding, at least 1),
    start = iteration mod (k − window + 1); all k groups at iteration 0."""
    k = int(k)
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if iteration == 0:
        return 0, k
    window = min(k, max(1, round(k * w)))
    start = int(iteration) % (k - window + 1)
    return start, start + window


def _first_distinct(vals: np.ndarray, k: int) -> np.ndarray:
    """An array of min(k, #distinct) values that, when it is shorter than k, holds every
    distinct value ascending: all ``seta_groups`` needs to tell its cases apart. A few thousand
    values usually show k distinct ones; else k passes, never a sort of N (``np.unique``)."""
    head = np.unique(vals[:4096])
    if head.size >= k:
        return head[:k]
    out: list[float] = []
    rest = vals
    while rest.size and len(out) < k:
        out.append(rest.min())
        rest = rest[rest > out[-1]]
    return np.array(out, dtype=vals.dtype)


def seta_groups(losses: torch.Tensor, k: int) -> torch.Tensor:
    """Group of each loss, 0 = easiest, by 1-D k-means ordered by mean loss.

    Degenerate inputs get a deterministic answer instead of k-means' empty clusters:
    all losses equal (or all unknown) → k equal consecutive chunks in input order (np.array_split
    sizes); fewer distinct values than k → one group per distinct value, ascending. NaN losses
    (never trained) are unknown: they are dealt round-robin over the k groups in input order
    (the caller passes ids in random order), so they neither pile into the hardest group nor
    are all windowed out together.

    Deviation at scale: with more than ``KMEANS_FIT_MAX`` known losses, k-means is fitted on the
    first ``KMEANS_FIT_MAX`` of them (a uniform sample: the ids come shuffled) and every loss is
    assigned to its nearest centre, so a 10-million-sample plan costs one fit of a million
    values, not a fit of ten million (seconds). Below that size the groups are unchanged.
    """
    x = torch.as_tensor(losses, dtype=torch.float64).flatten().cpu().numpy()
    n, k = x.size, int(k)
    groups = np.zeros(n, dtype=np.int64)
    if n == 0 or k <= 1:
        return torch.from_numpy(groups)
    known = ~np.isnan(x)
    vals = x[known]
    distinct = _first_distinct(vals, k)
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
            fit = KMeans(n_clusters=k, random_state=0, n_init="auto").fit(vals[:KMEANS_FIT_MAX].reshape(-1, 1))
            labels = fit.labels_ if vals.size <= KMEANS_FIT_MAX else fit.predict(vals.reshape(-1, 1))
        counts = np.bincount(labels, minlength=k)
        present = np.flatnonzero(counts)
        means = np.bincount(labels, weights=vals, minlength=k)[present] / counts[present]
        rank = np.empty(int(labels.max()) + 1, dtype=np.int64)
        rank[present[np.argsort(means, kind="stable")]] = np.arange(present.size)
        g_known = rank[labels]
    groups[known] = g_known
    groups[~known] = np.arange(int((~known).sum())) % k
    return torch.from_numpy(groups)


@register_strategy("seta")
class SeTa(PruningStrategy):
    """Per epoch: random keep (1 − p), k loss groups, sliding window; random keep only after δ·E.

    The window position is the epoch index (the official counter counts prune calls, one per
    epoch from epoch 0), so the plan needs no state and resumes exactly.
    """

    statistics = ("loss",)
    ratio_keys = {"p": "prune"}

    def __init__(self, seed: int = 0, p: float = 0.1, k: int = 5, w: float = 0.9, delta: float = 0.875) -> None:
        super().__init__(seed)
        self.p = check_fraction(p, "strategy.p")
        self.k = int(k)
        if self.k < 1:
            raise ValueError(f"strategy.k={k} must be >= 1")
        self.w = check_ratio(w, "strategy.w")
        self.delta = check_ratio(delta, "strategy.delta")
        self.keep = min(1.0, max(0.1, 1.0 - self.p))  # the code's clamp(1 − p, 0.1, 1)

    def annealing(self, ctx: EpochContext) -> bool:
        return ctx.epoch + 1 > self.delta * ctx.max_epochs

    def epoch_plan(self, ctx: EpochContext) -> EpochPlan:
        n = ctx.num_samples
        g = epoch_generator(self.seed, ctx.epoch, salt=_SALT)
        m = floor_count(self.keep, n)
        ids = torch.randperm(n, generator=g)[:m]
        info: dict[str, float] = {"planned_keep_ratio": self.keep}
        if self.annealing(ctx):
            info["annealing"] = 1
        else:
            info["annealing"] = 0
            losses = ctx.scores.loss[ids]
            groups = seta_groups(losses, self.k)
            start, stop = seta_window(self.k, self.w, ctx.epoch)
            in_window = (groups >= start) & (groups < stop)
            info.update(
                {"window_start": start, "window_stop": stop, "unseen": int(torch.count_nonzero(torch.isnan(losses)))}
            )
            sizes = torch.bincount(groups, minlength=self.k).tolist()
            for j in range(self.k):
                info[f"group_size_{j}"] = int(sizes[j])
            ids = ids[in_window]
        if ids.numel() == 0 and n > 0:
            ids = torch.randint(n, (1,), generator=g)
        info["realised_keep_ratio"] = ids.numel() / max(1, n)
        return EpochPlan(_ascending(ids, n), info=info)


def _ascending(ids: torch.Tensor, n: int) -> torch.Tensor:
    """Distinct ids in ascending order through a mask: O(N), where sorting them is O(N log N)."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[ids] = True
    return torch.nonzero(mask).flatten()
