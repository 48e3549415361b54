"""CCS: hard cutoff, equal-width strata, smallest-first budget, uniform sampling in strata."""

import numpy as np
import pytest
import torch

from qtune.pruning.statistics_store import StatisticsStore
from qtune.strategies import EpochContext, build_strategy
from qtune.strategies.ccs import select_ccs, stratum_budgets

NAN = float("nan")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_budgets_hand_worked():
    # order by count: bin2 (0), bin1 (1), bin0 (5), bin3 (10); budget 8
    # bin2 min(0, 8//4)=0; bin1 min(1, 8//3)=1 -> 7; bin0 min(5, 7//2)=3 -> 4; bin3 min(10, 4//1)=4
    assert stratum_budgets([5, 1, 0, 10], 8) == [3, 1, 0, 4]
    assert stratum_budgets([4, 4], 4) == [2, 2]
    assert stratum_budgets([3, 3], 10) == [3, 3]  # infeasible: everything


def test_cutoff_and_two_strata_hand_worked():
    s = torch.arange(10, dtype=torch.float64)
    for seed in range(5):
        out = select_ccs(s, 0.4, 0.2, num_bins=2, generator=gen(seed)).tolist()
        # cut floor(0.2*10)=2 hardest (9, 8); pool 0..7 range [0, 7] -> bins {0..3}, {4..7}; 2 + 2
        assert len(out) == 4 and 8 not in out and 9 not in out
        assert sum(i <= 3 for i in out) == 2 and sum(4 <= i <= 7 for i in out) == 2


def test_half_open_bins_last_one_closed():
    s = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0])
    # edges 0,1,2,3,4: bins {0},{1},{2},{3,4,4,4,4}; budget 4 -> 1,1,1,1
    for seed in range(5):
        out = select_ccs(s, 0.5, 0.0, num_bins=4, generator=gen(seed)).tolist()
        assert out[:3] == [0, 1, 2] and len(out) == 4 and out[3] >= 3


def test_non_positive_scores_like_negated_aum():
    s = -torch.tensor([0.9, 0.8, 0.1, 0.05, 0.5, 0.4])  # max <= 0 still bins correctly
    out = select_ccs(s, 0.5, 0.0, num_bins=3, generator=gen())
    assert len(out) == 3 and len(set(out.tolist())) == 3


def test_equal_scores_uniform_random():
    out = select_ccs(torch.ones(10), 0.3, 0.0, generator=gen(1))
    assert len(out) == 3


def test_nan_only_tops_up():
    s = torch.tensor([NAN, NAN, 1.0, 2.0])
    # m = 3, cut floor(0.25*4) = 1 -> id 3 (score 2); pool {2} short by 2 -> both NaN
    assert select_ccs(s, 0.75, 0.25, generator=gen()).tolist() == [0, 1, 2]
    # NaN is never cut as "hardest" and never stratified while the pool suffices
    assert select_ccs(torch.tensor([NAN, 5.0, 1.0, 2.0]), 0.5, 0.25, generator=gen()).tolist() == [2, 3]


def test_properties_against_numpy():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(5, 300))
        s = np.round(rng.normal(size=n), 2)
        keep = float(rng.uniform(0.05, 0.6))
        beta = float(rng.uniform(0, 1 - keep))
        out = select_ccs(torch.tensor(s), keep, beta, num_bins=int(rng.integers(1, 60)), generator=gen(trial)).numpy()
        m, cut = int(np.floor(keep * n + 1e-9)), int(np.floor(beta * n + 1e-9))
        assert len(out) == m and len(np.unique(out)) == m and np.all(np.diff(out) > 0)
        hardest = np.lexsort((np.arange(n), -s))[:cut]
        assert not set(out.tolist()) & set(hardest.tolist())


def test_stratified_keeps_rare_easy_and_hard_samples():
    # 90 dense mid scores, 5 very easy, 5 very hard: top-k would take no easy one, CCS keeps them
    s = torch.cat([torch.full((5,), -10.0), torch.linspace(-1, 1, 90), torch.full((5,), 10.0)])
    out = select_ccs(s, 0.3, 0.0, num_bins=10, generator=gen())
    assert set(range(5)) <= set(out.tolist()) and set(range(95, 100)) <= set(out.tolist())


def test_deterministic_and_seed_sensitive():
    s = torch.rand(200, generator=gen(9))
    assert torch.equal(select_ccs(s, 0.3, 0.1), select_ccs(s, 0.3, 0.1))  # None: fixed seed
    assert torch.equal(select_ccs(s, 0.3, 0.1, generator=gen(1)), select_ccs(s, 0.3, 0.1, generator=gen(1)))
    assert not torch.equal(select_ccs(s, 0.3, 0.1, generator=gen(1)), select_ccs(s, 0.3, 0.1, generator=gen(2)))


def ctx(st, e):
    return EpochContext(e, 5, st.num_samples, 0, st)


def test_strategy_el2n_warmup_then_static():
    st = StatisticsStore(20)
    strat = build_strategy("ccs", keep_ratio=0.5, beta=0.1, warmup_epochs=1)
    assert strat.epoch_plan(ctx(st, 0)).info["warmup"] == 1
    assert strat.needs_scoring_pass(ctx(st, 1)) and not strat.needs_scoring_pass(ctx(st, 0))
    st.update(torch.arange(20), 0, el2n=torch.arange(20).float(), track_dynamics=False)
    p1 = strat.epoch_plan(ctx(st, 1))
    assert len(p1.sample_ids) == 10 and not {18, 19} & set(p1.sample_ids.tolist())
    assert not strat.needs_scoring_pass(ctx(st, 2))
    st.update(torch.arange(20), 1, el2n=-torch.arange(20).float(), track_dynamics=False)
    assert torch.equal(strat.epoch_plan(ctx(st, 2)).sample_ids, p1.sample_ids)


def test_strategy_aum_is_negated_low_margin_cut():
    st = StatisticsStore(10)
    for e in range(2):
        st.update(torch.arange(10), e, margin=torch.linspace(-0.9, 0.9, 10), track_dynamics=True)
    strat = build_strategy("ccs", keep_ratio=0.5, beta=0.2, score_column="aum", warmup_epochs=2)
    assert not strat.needs_scoring_pass(ctx(st, 2))  # dynamics come from the warm-up training
    out = strat.epoch_plan(ctx(st, 2)).sample_ids.tolist()
    assert len(out) == 5 and 0 not in out and 1 not in out  # lowest AUM = hardest, cut


def test_strategy_scores_file(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, sample_id=np.arange(10), forgetting=np.arange(10)[::-1])
    strat = build_strategy("ccs", keep_ratio=0.5, beta=0.2, score_column="forgetting", scores_file=str(p))
    out = strat.epoch_plan(ctx(StatisticsStore(10), 0)).sample_ids.tolist()
    assert len(out) == 5 and 0 not in out and 1 not in out  # most forgotten = ids 0, 1


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"beta": 0.6, "keep_ratio": 0.5}, "strategy.beta"),
        ({"score_column": "magic"}, "strategy.score_column"),
        ({"score": "el2n"}, "now called 'score_column'"),
        ({"num_bins": 0}, "strategy.num_bins"),
    ],
)
def test_config_errors(kwargs, key):
    with pytest.raises(ValueError, match=key):
        build_strategy("ccs", **kwargs)
