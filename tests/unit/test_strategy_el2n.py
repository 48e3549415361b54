"""EL2N: static top-k by early-training EL2N, with offset, warm-up, averaging and files."""

import numpy as np
import pytest
import torch

from qtune.pruning.statistics_store import StatisticsStore
from qtune.strategies import EpochContext, build_strategy
from qtune.strategies.el2n import select_el2n

NAN = float("nan")


def ctx(store, epoch, max_epochs=5, seed=0):
    return EpochContext(epoch=epoch, max_epochs=max_epochs, num_samples=store.num_samples, seed=seed, scores=store)


def test_hand_worked_top_k():
    s = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    # round(0.4*5) = 2 highest: 0.9 (id 1), 0.7 (id 3)
    assert select_el2n(s, 0.4).tolist() == [1, 3]
    # offset round(0.2*5) = 1 skips 0.9; next two: 0.7 (id 3), 0.5 (id 2)
    assert select_el2n(s, 0.4, offset=0.2).tolist() == [2, 3]


def test_nan_never_wins_and_ties_prefer_lower_id():
    s = torch.tensor([NAN, 0.2, NAN, 0.1])
    assert select_el2n(s, 0.5).tolist() == [1, 3]
    assert select_el2n(s, 0.75).tolist() == [0, 1, 3]  # budget 3 > 2 scored: first NaN by id
    assert select_el2n(torch.tensor([0.5, 0.5, 0.5, 0.1]), 0.5).tolist() == [0, 1]


def test_matches_independent_numpy_ranking():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        s = np.round(rng.random(n), 1)  # many ties
        keep, off = float(rng.uniform(0.05, 0.6)), float(rng.uniform(0, 0.4))
        k = max(1, round(keep * n))
        o = min(round(off * n), n - k)
        order = np.lexsort((np.arange(n), -s))  # score desc, then id asc
        expected = sorted(order[o : o + k].tolist())
        assert select_el2n(torch.tensor(s), keep, off).tolist() == expected


def test_offset_window_shifted_back_to_keep_count():
    s = torch.tensor([3.0, 2.0, 1.0])
    # k = round(1.5) = 2, offset round(1.5) = 2 > n - k = 1: window starts at rank 1
    assert select_el2n(s, 0.5, 0.5).tolist() == [1, 2]


def test_keeps_at_least_one_and_empty_input():
    assert select_el2n(torch.tensor([1.0, 2.0]), 0.1).tolist() == [1]
    assert select_el2n(torch.zeros(0), 0.5).numel() == 0


def test_warmup_then_static_selection():
    st = StatisticsStore(6)
    strat = build_strategy("el2n", seed=0, keep_ratio=0.5, warmup_epochs=1)
    assert not strat.needs_scoring_pass(ctx(st, 0))
    assert strat.epoch_plan(ctx(st, 0)).sample_ids.tolist() == list(range(6))
    assert strat.needs_scoring_pass(ctx(st, 1))
    st.update(torch.arange(6), 0, el2n=torch.tensor([0.6, 0.1, 0.9, 0.2, 0.8, 0.3]), track_dynamics=False)
    plan = strat.epoch_plan(ctx(st, 1))
    assert plan.sample_ids.tolist() == [0, 2, 4]
    assert plan.info["planned_keep_ratio"] == 0.5
    # later scores do not move a static subset, and no more scoring passes are asked for
    st.update(torch.arange(6), 1, el2n=torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]), track_dynamics=False)
    assert not strat.needs_scoring_pass(ctx(st, 2))
    assert strat.epoch_plan(ctx(st, 2)).sample_ids.tolist() == [0, 2, 4]


def test_score_passes_average_over_last_warmup_epochs_ignoring_nan():
    st = StatisticsStore(4)
    strat = build_strategy("el2n", keep_ratio=0.5, warmup_epochs=2, score_passes=2)
    assert [strat.needs_scoring_pass(ctx(st, e)) for e in range(4)] == [False, True, True, False]
    strat.epoch_plan(ctx(st, 0))
    st.update(torch.arange(4), 0, el2n=torch.tensor([1.0, 0.0, 0.5, NAN]), track_dynamics=False)
    strat.epoch_plan(ctx(st, 1))
    strat.epoch_plan(ctx(st, 1))  # planned twice (resume): must not count twice
    st.update(torch.arange(4), 1, el2n=torch.tensor([0.0, 0.9, 0.5, 0.45]), track_dynamics=False)
    plan = strat.epoch_plan(ctx(st, 2))
    # means: id0 0.5, id1 0.45, id2 0.5, id3 0.45 (NaN pass skipped) -> top 2 = ids 0, 2
    assert plan.sample_ids.tolist() == [0, 2]
    assert plan.info["score_passes_done"] == 2


def test_scores_file_prunes_from_epoch_zero(tmp_path):
    path = tmp_path / "scores.npz"
    np.savez(path, sample_id=np.array([3, 2, 1, 0]), el2n=np.array([0.9, 0.1, 0.8, 0.2]))
    strat = build_strategy("el2n", keep_ratio=0.5, scores_file=str(path))
    st = StatisticsStore(4)
    assert not strat.needs_scoring_pass(ctx(st, 0))
    # id 3 -> 0.9, id 1 -> 0.8
    assert strat.epoch_plan(ctx(st, 0)).sample_ids.tolist() == [1, 3]


def test_state_roundtrip_resumes_same_subset():
    st = StatisticsStore(5)
    st.update(torch.arange(5), 0, el2n=torch.tensor([0.5, 0.4, 0.3, 0.2, 0.1]), track_dynamics=False)
    a = build_strategy("el2n", keep_ratio=0.4, warmup_epochs=0)
    ids = a.epoch_plan(ctx(st, 0)).sample_ids
    b = build_strategy("el2n", keep_ratio=0.4, warmup_epochs=0)
    b.load_state_dict(a.state_dict())
    st.update(torch.arange(5), 1, el2n=torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), track_dynamics=False)
    assert torch.equal(b.epoch_plan(ctx(st, 3)).sample_ids, ids)
    assert ids.tolist() == [0, 1]


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"keep_ratio": 0.0}, "strategy.keep_ratio"),
        ({"keep_ratio": 0.8, "offset": 0.3}, "strategy.offset"),
        ({"warmup_epochs": 1, "score_passes": 3}, "strategy.score_passes"),
    ],
)
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        build_strategy("el2n", **kwargs)
