"""RS2: fresh random subsets per round; without replacement, permutation walks without repeats."""

import math
from collections import Counter

import pytest

from qtune.pruning.statistics_store import StatisticsStore
from qtune.strategies import EpochContext, build_strategy
from qtune.strategies.rs2 import rs2_plan


def rounds(n, r, count, seed=0, replacement=False):
    return [rs2_plan(n, r, t, seed, replacement).tolist() for t in range(count)]


@pytest.mark.parametrize("n,r", [(10, 0.3), (7, 0.5), (13, 0.2), (5, 1.0), (9, 0.9), (1, 0.5)])
def test_without_replacement_no_duplicates_and_balanced_coverage(n, r):
    s = max(1, round(r * n))
    plans = rounds(n, r, 12)
    seen = Counter()
    for t, plan in enumerate(plans):
        assert len(plan) == s and len(set(plan)) == s  # a round never repeats an id
        assert all(0 <= i < n for i in plan)
        seen.update(plan)
        counts = [seen[i] for i in range(n)]
        # each permutation is walked once: no id runs more than one visit ahead of another
        assert max(counts) - min(counts) <= 1, (t, counts)
    # every sample is seen once before any repeats
    first = [i for plan in plans[: math.ceil(n / s)] for i in plan]
    assert set(first) == set(range(n))


def test_wrap_round_takes_tail_and_fills_from_fresh_permutation():
    n, r = 10, 0.3  # S = 3: rounds 0-2 use 9 ids of permutation 0, round 3 holds the 10th
    plans = rounds(n, r, 4)
    first9 = set(plans[0]) | set(plans[1]) | set(plans[2])
    assert len(first9) == 9
    (tail,) = set(range(n)) - first9
    assert tail in plans[3] and len(set(plans[3])) == 3


def test_round_size_uses_python_rounding():
    assert len(rs2_plan(10, 0.25, 0, 0)) == 2  # round(2.5) = 2
    assert len(rs2_plan(10, 0.35, 0, 0)) == 4  # round(3.5) = 4
    assert len(rs2_plan(10, 0.01, 0, 0)) == 1  # at least one
    assert rs2_plan(0, 0.5, 3, 0).numel() == 0


def test_full_ratio_is_every_id_every_round():
    for plan in rounds(6, 1.0, 3):
        assert plan == list(range(6))


def test_with_replacement_independent_rounds():
    plans = rounds(50, 0.2, 6, replacement=True)
    for plan in plans:
        assert len(plan) == 10 and len(set(plan)) == 10
    assert len({tuple(p) for p in plans}) == 6
    # independent rounds: over many rounds ids repeat before full coverage is reached
    many = rounds(50, 0.2, 5, seed=3, replacement=True)
    assert len({i for p in many for i in p}) < 50


def test_deterministic_per_seed_and_seed_sensitive():
    assert rounds(40, 0.25, 5, seed=7) == rounds(40, 0.25, 5, seed=7)
    assert rounds(40, 0.25, 5, seed=7) != rounds(40, 0.25, 5, seed=8)
    assert rounds(40, 0.25, 3, seed=7, replacement=True) == rounds(40, 0.25, 3, seed=7, replacement=True)


def test_strategy_wraps_function_without_state():
    st = StatisticsStore(30)
    strat = build_strategy("rs2", seed=4, keep_ratio=0.2)
    for e in range(4):
        plan = strat.epoch_plan(EpochContext(e, 4, 30, 4, st))
        assert plan.sample_ids.tolist() == rs2_plan(30, 0.2, e, 4).tolist()
        assert plan.weights is None and plan.info["realised_keep_ratio"] == pytest.approx(0.2)
    assert strat.state_dict() == {}
