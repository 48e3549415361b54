"""Sample and token counts from ratios, robust to binary floating point.

``0.29 * 100`` is ``28.999999999999996`` in floating point, so a bare ``math.floor`` would keep
28 samples where the user asked for 29 %. Every strategy computes its budgets through these
helpers so that a decimal ratio means what it says.
"""

from __future__ import annotations

import math

_EPS = 1e-9


def floor_count(ratio: float, n: int) -> int:
    """⌊ratio·n⌋, treating products within 1e-9 of an integer as that integer."""
    return max(0, math.floor(float(ratio) * n + _EPS))


def ceil_count(ratio: float, n: int) -> int:
    """⌈ratio·n⌉, treating products within 1e-9 of an integer as that integer."""
    return max(0, math.ceil(float(ratio) * n - _EPS))


def round_count(ratio: float, n: int) -> int:
    """Python ``round(ratio·n)`` (half to even, as the official code), snapping near-integers
    and near-halves first so 0.35·10 rounds like 3.5 rather than 3.4999999999999996."""
    x = float(ratio) * n
    return max(0, round(round(x, 9)))


def check_fraction(value: float, key: str, *, allow_zero: bool = True, allow_one: bool = False) -> float:
    """Validate a fraction in [0, 1) (by default); the error names the config key."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} is not a number; expected a fraction in [0, 1)") from None
    lo_ok = v >= 0.0 if allow_zero else v > 0.0
    hi_ok = v <= 1.0 if allow_one else v < 1.0
    if not (lo_ok and hi_ok):
        lo = "[0" if allow_zero else "(0"
        hi = "1]" if allow_one else "1)"
        raise ValueError(f"{key}={v} is out of range; expected a fraction in {lo}, {hi}")
    return v


_CHUNK = 1 << 20  # 8 MB of float64: temporaries this size come from the heap, not fresh pages


def order_key(scores, descending: bool = True):
    """int64 keys whose stable ascending sort is ``nan_last_order(scores, descending)``.

    Why: an integer sort is a radix sort in torch, about three times faster than a stable float
    sort at 1e7. The float64 bit pattern is made monotone (negative values flip their low 63
    bits), -0.0 is folded onto +0.0 (they compare equal, so ties go by index), and NaN gets the
    largest key so it sorts after every value, -inf or +inf included, ties by index. Built in
    chunks so that its temporaries stay small.
    """
    import torch

    s = torch.as_tensor(scores).detach().cpu().flatten()
    out = torch.empty(s.numel(), dtype=torch.int64)
    for i in range(0, s.numel(), _CHUNK):
        x = s[i : i + _CHUNK].double()
        bits = (x + 0.0).view(torch.int64)  # -0.0 + 0.0 == +0.0
        key = torch.where(bits < 0, bits ^ 0x7FFF_FFFF_FFFF_FFFF, bits)
        if descending:
            key.bitwise_not_()  # -key - 1: reverses the order, never overflows
        out[i : i + _CHUNK] = key.masked_fill_(torch.isnan(x), torch.iinfo(torch.int64).max)
    return out


def nan_last_order(scores, descending: bool = True):
    """Indices ordering ``scores`` (1-D tensor) by value, NaN last, ties by index ascending.

    Why: no-signal samples (NaN) must never win a top-k, and ties need a deterministic,
    documented break (lower sample id ranks first) so plans match across ranks and runs.
    """
    import torch

    return torch.sort(order_key(scores, descending), stable=True).indices


def first_mask(key, m: int):
    """bool mask of the ``m`` entries that come first in the stable ascending order of the int64
    ``key`` (ties: lower index first), in O(N) by selection instead of a sort."""
    import numpy as np
    import torch

    n = key.numel()
    m = max(0, min(int(m), n))
    if m in (0, n):
        return torch.full((n,), m == n, dtype=torch.bool)
    kth = int(np.partition(key.numpy(), m - 1)[m - 1])
    mask = key < kth
    need = m - int(torch.count_nonzero(mask))
    mask[torch.nonzero(key == kth).flatten()[:need]] = True
    return mask


def ranked_slice(scores, start: int, stop: int, descending: bool = True):
    """Ascending indices of the entries at positions [start, stop) of ``nan_last_order``:
    the same set as ``nan_last_order(scores)[start:stop].sort()``, without sorting N values."""
    import torch

    key = order_key(scores, descending)
    mask = first_mask(key, stop)
    if start > 0:
        mask &= ~first_mask(key, start)
    return torch.nonzero(mask).flatten()


def check_warmup(value: int, key: str = "strategy.warmup_epochs") -> int:
    """A non-negative whole number of warm-up epochs."""
    v = int(value)
    if v < 0:
        raise ValueError(f"{key}={value} must be >= 0")
    return v


def check_skip_plus_keep(skip: float, skip_key: str, keep: float, why: str) -> None:
    """A share skipped first plus the share kept must not exceed the whole set."""
    if skip + keep > 1.0 + 1e-9:
        raise ValueError(f"{skip_key} ({skip}) + strategy.keep_ratio ({keep}) > 1: {why}")
