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


def nan_last_order(scores, descending: bool = True):
    """Indices ordering ``scores`` (1-D tensor) by value, NaN last, ties by index ascending.

    Why: no-signal samples (NaN) must never win a top-k, and ties need a deterministic,
    documented break (lower sample id ranks first) so plans match across ranks and runs.
    """
    import torch

    s = scores.detach().double().cpu()
    worst = float("-inf") if descending else float("inf")
    key = torch.where(torch.isnan(s), torch.full_like(s, worst), s)
    # stable sort keeps index order among ties
    order = torch.sort(key, descending=descending, stable=True).indices
    # NaN entries were mapped to the worst value; move them behind genuine -inf/+inf too
    is_nan = torch.isnan(s)[order]
    return torch.cat([order[~is_nan], order[is_nan]])


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
