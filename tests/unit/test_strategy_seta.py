"""SeTa: window arithmetic, loss groups, random keep, annealing."""

import numpy as np
import pytest
import torch

from qtune.pruning.statistics_store import StatisticsStore
from qtune.strategies import EpochContext, build_strategy
from qtune.strategies.seta import seta_groups, seta_window

NAN = float("nan")


@pytest.mark.parametrize(
    "k,w,expected",
    [
        (5, 0.9, [(0, 5), (1, 5), (0, 4), (1, 5), (0, 4)]),  # window 4, slide 1: alternate
        (5, 0.6, [(0, 5), (1, 4), (2, 5), (0, 3), (1, 4)]),  # window 3, slide 2: cycle 1, 2, 0
        (5, 0.5, [(0, 5), (1, 3), (2, 4), (3, 5), (0, 2)]),  # round(2.5) = 2 (half to even)
        (10, 0.04, [(0, 10), (1, 2), (2, 3)]),  # round(0.4) = 0 -> at least 1
        (1, 0.9, [(0, 1), (0, 1)]),
    ],
)
def test_window(k, w, expected):
    assert [seta_window(k, w, i) for i in range(len(expected))] == expected


def test_groups_hand_worked_clusters_ordered_easy_to_hard():
    losses = torch.tensor([5.0, 0.1, 2.0, 5.1, 0.12, 2.05])
    assert seta_groups(losses, 3).tolist() == [2, 0, 1, 2, 0, 1]


def test_groups_equal_losses_are_equal_chunks_in_input_order():
    assert seta_groups(torch.full((7,), 3.0), 3).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert seta_groups(torch.full((4,), NAN), 2).tolist() == [0, 0, 1, 1]


def test_groups_fewer_distinct_values_than_k():
    assert seta_groups(torch.tensor([2.0, 1.0, 2.0, 1.0]), 3).tolist() == [1, 0, 1, 0]


def test_groups_nan_dealt_round_robin():
    g = seta_groups(torch.tensor([NAN, 0.0, NAN, 10.0, NAN, 20.0, NAN]), 3)
    assert g[[1, 3, 5]].tolist() == [0, 1, 2]
    assert g[[0, 2, 4, 6]].tolist() == [0, 1, 2, 0]


def test_groups_monotone_in_loss_property():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.lognormal(size=200)
        g = seta_groups(torch.tensor(x), 5).numpy()
        order = np.argsort(x)
        assert np.all(np.diff(g[order]) >= 0)  # 1-D clusters are contiguous, easy -> hard
        assert set(g.tolist()) == set(range(5))


def clustered_store(levels=5, per=20, seed=0):
    n = levels * per
    st = StatisticsStore(n)
    g = torch.Generator().manual_seed(seed)
    loss = torch.arange(n).div(per, rounding_mode="floor").float() + 0.01 * torch.rand(n, generator=g)
    st.update(torch.arange(n), 0, loss=loss, track_dynamics=False)
    return st, (loss.floor().long())


def ctx(st, e, max_epochs=8, seed=0):
    return EpochContext(e, max_epochs, st.num_samples, seed, st)


def test_sliding_window_drops_easiest_then_hardest_group():
    st, level = clustered_store()
    strat = build_strategy("seta", seed=3)  # p 0.1, k 5, w 0.9
    p0 = strat.epoch_plan(ctx(st, 0)).sample_ids
    assert len(p0) == 90  # iteration 0: all groups of the floor(0.9*100) random survivors
    p1 = strat.epoch_plan(ctx(st, 1))
    assert set(level[p1.sample_ids].tolist()) == {1, 2, 3, 4}  # window (1, 5): easiest out
    sizes = [p1.info[f"group_size_{j}"] for j in range(5)]
    assert sum(sizes) == 90 and len(p1.sample_ids) == 90 - sizes[0]
    p2 = strat.epoch_plan(ctx(st, 2))
    assert set(level[p2.sample_ids].tolist()) == {0, 1, 2, 3}  # window (0, 4): hardest out
    assert p2.weights is None


def test_annealing_is_plain_random_keep():
    st, level = clustered_store()
    strat = build_strategy("seta", seed=3)
    plan = strat.epoch_plan(ctx(st, 7, max_epochs=8))  # 8 > 0.875*8 = 7
    assert plan.info["annealing"] == 1 and len(plan.sample_ids) == 90
    assert set(level[plan.sample_ids].tolist()) == {0, 1, 2, 3, 4}
    assert strat.epoch_plan(ctx(st, 6, max_epochs=8)).info["annealing"] == 0
    full = build_strategy("seta", p=0.0).epoch_plan(ctx(st, 7, max_epochs=8))
    assert full.sample_ids.tolist() == list(range(100))


def test_deterministic_per_seed():
    st, _ = clustered_store()
    a = build_strategy("seta", seed=1).epoch_plan(ctx(st, 1)).sample_ids
    b = build_strategy("seta", seed=1).epoch_plan(ctx(st, 1)).sample_ids
    c = build_strategy("seta", seed=2).epoch_plan(ctx(st, 1)).sample_ids
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unseen_samples_spread_over_groups_not_windowed_out():
    st = StatisticsStore(100)
    st.update(torch.arange(50), 0, loss=torch.linspace(0, 1, 50), track_dynamics=False)
    plan = build_strategy("seta", p=0.0, seed=0).epoch_plan(ctx(st, 1))
    unseen_kept = int((plan.sample_ids >= 50).sum())
    assert plan.info["unseen"] == 50
    assert 30 <= unseen_kept <= 45  # about 4/5 of them, not all or none


def test_tiny_dataset_keeps_one_sample():
    st = StatisticsStore(1)
    assert build_strategy("seta").epoch_plan(ctx(st, 1)).sample_ids.numel() == 1


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"p": 1.0}, "strategy.p"),
        ({"w": 0}, "strategy.w"),
        ({"k": 0}, "strategy.k"),
        ({"delta": 1.5}, "strategy.delta"),
    ],
)
def test_config_errors(kwargs, key):
    with pytest.raises(ValueError, match=key):
        build_strategy("seta", **kwargs)
