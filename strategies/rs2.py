"""``rs2``: repeated random sampling (Okanovic et al., §5).

Each epoch ("round") trains on a fresh random r·N subset, so over several rounds the model sees
most of the data while each round costs r of a full epoch, and selection costs nothing. Without
replacement (the paper's main variant) the rounds walk one random permutation, so every sample
is seen once per ⌈1/r⌉ rounds. The plan is a pure function of (N, r, seed, round): no state to
checkpoint, identical on every rank and after a resume.
"""

from __future__ import annotations

import torch

from .base import EpochContext, EpochPlan, PruningStrategy, check_ratio, epoch_generator
from .counting import round_count
from .registry import register_strategy

_SALT = 0x5253  # "RS": keeps RS2's streams apart from other strategies' with the same seed


def _perm(num_samples: int, seed: int, cycle: int) -> torch.Tensor:
    return torch.randperm(num_samples, generator=epoch_generator(seed, cycle, salt=_SALT))


def _walk(n: int, s: int, epoch: int) -> tuple[int, int, int, list[int]]:
    """(cycle, queue length, cursor) before round ``epoch`` and each cycle's tail length (the ids
    the previous permutation had left when the cycle began), from the counts alone: O(epoch)."""
    cycle, length, cursor, tails = 0, n, 0, [0]
    for _ in range(int(epoch)):
        left = length - cursor
        if left >= s:
            cursor += s
        else:
            cycle, length, cursor = cycle + 1, n - (s - left), 0
            tails.append(left)
    return cycle, length, cursor, tails


def _next_queue(n: int, s: int, seed: int, cycle: int, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the wrap round's fill-up ids, the new queue) when ``cycle`` begins after ``tail``."""
    fresh = _perm(n, seed, cycle)
    in_tail = torch.zeros(n, dtype=torch.bool)
    in_tail[tail] = True
    free_pos = torch.nonzero(~in_tail[fresh]).flatten()[: s - tail.numel()]
    rest = torch.ones(n, dtype=torch.bool)
    rest[free_pos] = False
    return fresh[free_pos], fresh[rest]


def _queue(n: int, s: int, seed: int, cycle: int, tails: list[int], cache: dict | None) -> torch.Tensor:
    """Permutation ``cycle`` less the ids its wrap round took, without replaying the rounds.

    Cycle c's tail is the last t_c ids of queue c − 1. The wrap round removes ids from the first
    s positions of its permutation only, so queue c − 1 ends with that permutation's last n − s
    ids: when t_c ≤ n − s (always when keep_ratio ≤ 0.5) the tail is read from permutation c − 1
    directly and queue c costs two randperms. Otherwise the queues are rebuilt forward from the
    nearest cycle that is cycle 0, has such a tail, or is the one ``cache`` holds.
    """
    key = (n, s, int(seed))
    start = cycle
    while start > 0 and not (cache and cache.get("key") == key and cache.get("cycle") == start):
        if tails[start] <= n - s or start == 1:
            break
        start -= 1
    if cache and cache.get("key") == key and cache.get("cycle") == start:
        queue = cache["queue"]
    elif start == 0:
        queue = _perm(n, seed, 0)
    else:
        t = tails[start]
        tail = _perm(n, seed, start - 1)[n - t :] if t else torch.zeros(0, dtype=torch.long)
        queue = _next_queue(n, s, seed, start, tail)[1]
    for c in range(start + 1, cycle + 1):
        t = tails[c]
        queue = _next_queue(n, s, seed, c, queue[queue.numel() - t :])[1]
    if cache is not None:
        cache.update(key=key, cycle=cycle, queue=queue)
    return queue


def rs2_plan(
    num_samples: int, keep_ratio: float, epoch: int, seed: int, replacement: bool = False, cache: dict | None = None
) -> torch.Tensor:
    """Ascending sample ids of round ``epoch``: max(1, round(keep_ratio·N)) distinct ids.

    Without replacement: rounds take consecutive slices of permutation 0, then 1, … When a round
    needs more ids than the current permutation has left, it takes that tail and fills up with
    the first ids of the next permutation that are not in the tail; those are removed from the
    next permutation, whose remaining ids (tail ids included) are walked in order. So a round
    never repeats an id and each permutation still covers every id exactly once (the official
    code instead re-takes the head of the exhausted permutation). With replacement: each round
    is an independent uniform subset.

    Cost: each permutation is seeded by (seed, cycle), so a round is found from the counts alone
    and built from at most three randperms of N: O(N) at any epoch when keep_ratio ≤ 0.5 (see
    ``_queue``). Above 0.5 a queue can depend on every earlier one; then ``cache`` (a dict the
    caller keeps, holding the last queue built) makes consecutive epochs O(N), and a cold start
    (a resume) replays the permutations once. The plans are those of the full replay.
    """
    n = int(num_samples)
    if n <= 0:
        return torch.zeros(0, dtype=torch.long)
    s = min(n, max(1, round_count(keep_ratio, n)))
    if replacement:
        g = epoch_generator(seed, epoch, salt=_SALT + 1)
        return torch.randperm(n, generator=g)[:s].sort().values
    cycle, length, cursor, tails = _walk(n, s, epoch)
    queue = _queue(n, s, seed, cycle, tails, cache)
    if length - cursor >= s:
        return queue[cursor : cursor + s].sort().values
    tail = queue[cursor:]
    fill, queue = _next_queue(n, s, seed, cycle + 1, tail)
    if cache is not None:
        cache.update(cycle=cycle + 1, queue=queue)
    return torch.cat([tail, fill]).sort().values


@register_strategy("rs2")
class RS2(PruningStrategy):
    """A fresh ``keep_ratio`` subset each epoch; the LR schedule should span the steps run."""

    ratio_keys = {"keep_ratio": "keep"}
    statistics = ()  # reads no scores

    def __init__(self, seed: int = 0, keep_ratio: float = 0.1, replacement: bool = False) -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.keep_ratio")
        self.replacement = bool(replacement)
        self._cache: dict = {}  # the last queue built: a cost cache, not state (plans ignore it)

    def epoch_plan(self, ctx: EpochContext) -> EpochPlan:
        ids = rs2_plan(ctx.num_samples, self.keep_ratio, ctx.epoch, self.seed, self.replacement, self._cache)
        return EpochPlan(
            ids,
            info={
                "planned_keep_ratio": self.keep_ratio,
                "realised_keep_ratio": ids.numel() / max(1, ctx.num_samples),
            },
        )
