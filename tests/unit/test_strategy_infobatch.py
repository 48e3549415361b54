"""InfoBatch: soft pruning below the mean with 1/(1-r) weights; full first and last epochs."""

from fractions import Fraction

import pytest
import torch

from qtune.pruning.loss import masked_token_mean
from qtune.pruning.statistics_store import StatisticsStore
from qtune.strategies import EpochContext, build_strategy
from qtune.strategies.infobatch import infobatch_plan

NAN = float("nan")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_hand_worked():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])  # mean 4: W = {0, 1, 2} (4 is not < 4)
    idx, w = infobatch_plan(losses, 0.5, gen())
    ids = idx.tolist()
    assert len(ids) == 3 and 3 in ids and 4 in ids  # floor(0.5*3) = 1 of W survives
    (survivor,) = set(ids) - {3, 4}
    assert survivor in (0, 1, 2)
    assert dict(zip(ids, w.tolist())) == {survivor: 2.0, 3: 1.0, 4: 1.0}


def test_equal_losses_keep_everything_with_unit_weights():
    idx, w = infobatch_plan(torch.full((6,), 0.7), 0.5, gen())
    assert idx.tolist() == list(range(6)) and torch.all(w == 1)


def test_nan_losses_always_kept_and_outside_the_mean():
    idx, w = infobatch_plan(torch.tensor([NAN, 1.0, 3.0]), 0.5, gen())
    # mean of known = 2: W = {1}, floor(0.5*1) = 0 kept
    assert idx.tolist() == [0, 2] and w.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("r", [0.3, 0.5, 0.7, 0.29])
def test_counts_match_exact_fraction_arithmetic(r):
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        losses = torch.rand(101, generator=g).double() ** 3
        wl = int((losses < losses.mean()).sum())
        kept_w = int((1 - Fraction(str(r))) * wl)  # exact floor((1 - r)*|W|)
        idx, w = infobatch_plan(losses, r, gen(1))
        assert len(idx) == 101 - wl + kept_w
        up = w > 1
        assert int(up.sum()) == kept_w
        assert torch.allclose(w[up], torch.tensor(1 / (1 - r)))
        assert torch.all(losses[idx[~up]] >= losses.mean())  # everyone else is at/above the mean


def test_survivors_are_uniform_and_unbiased():
    losses = torch.tensor([0.0, 0.1, 0.2, 0.3, 5.0])  # W = 4 lowest, keep 2 of them
    hits = torch.zeros(5)
    total = torch.zeros(())
    trials = 2000
    for s in range(trials):
        idx, w = infobatch_plan(losses, 0.5, gen(s))
        hits[idx] += 1
        total += (w * (losses[idx] + 1)).sum()
    assert torch.all((hits[:4] / trials - 0.5).abs() < 0.05)
    # E[sum of weighted (loss+1)] equals the unpruned sum of (loss+1)
    assert float(total / trials) == pytest.approx(float((losses + 1).sum()), rel=0.02)


def test_deterministic_per_generator():
    x = torch.rand(50, generator=gen(2))
    assert torch.equal(infobatch_plan(x, 0.5, gen(3))[0], infobatch_plan(x, 0.5, gen(3))[0])
    assert not torch.equal(infobatch_plan(x, 0.5, gen(3))[0], infobatch_plan(x, 0.5, gen(4))[0])


def test_unit_weights_reproduce_unpruned_token_mean_loss_exactly():
    g = gen(0)
    token_loss = torch.rand(4, 7, generator=g) * 3
    mask = torch.rand(4, 7, generator=g) > 0.3
    plain = masked_token_mean(token_loss, mask)
    weighted = masked_token_mean(token_loss, mask, torch.ones(4))
    assert torch.equal(plain, weighted)
    ref = token_loss[mask].double().sum() / mask.sum()
    assert float(plain) == pytest.approx(float(ref), rel=1e-6)
    # token-mean form (b): weight scales the numerator only
    w = torch.tensor([2.0, 1.0, 1.0, 2.0])
    ref_w = (token_loss * mask * w[:, None]).double().sum() / mask.sum()
    assert float(masked_token_mean(token_loss, mask, w)) == pytest.approx(float(ref_w), rel=1e-6)


def test_plan_weights_of_one_in_full_epochs_give_unpruned_loss():
    st = StatisticsStore(4)
    st.update(torch.arange(4), 0, loss=torch.tensor([0.1, 0.2, 3.0, 4.0]), track_dynamics=False)
    strat = build_strategy("infobatch")
    plan = strat.epoch_plan(EpochContext(0, 8, 4, 0, st))
    token_loss, mask = torch.rand(4, 5, generator=gen(1)), torch.ones(4, 5, dtype=torch.bool)
    assert torch.equal(
        masked_token_mean(token_loss[plan.sample_ids], mask, plan.weights), masked_token_mean(token_loss, mask)
    )


def test_schedule_first_full_pruned_then_annealing_resets_weights():
    st = StatisticsStore(10)
    st.update(torch.arange(10), 0, loss=torch.arange(10).float(), track_dynamics=False)
    strat = build_strategy("infobatch", prune_ratio=0.5, delta=0.875)
    c = lambda e: EpochContext(e, 3, 10, 0, st)  # noqa: E731  delta*E = 2.625 (not an integer)
    p0, p1, p2 = (strat.epoch_plan(c(e)) for e in range(3))
    assert p0.sample_ids.tolist() == list(range(10)) and torch.all(p0.weights == 1)
    # mean 4.5: W = {0..4}, keep floor(2.5) = 2 of them
    assert len(p1.sample_ids) == 7 and p1.info["well_learned"] == 5 and p1.info["upweighted"] == 2
    assert p2.sample_ids.tolist() == list(range(10)) and torch.all(p2.weights == 1)
    assert p2.info["annealing"] == 1


def test_config_errors():
    with pytest.raises(ValueError, match="strategy.prune_ratio"):
        build_strategy("infobatch", prune_ratio=1.0)
    with pytest.raises(ValueError, match="strategy.delta"):
        build_strategy("infobatch", delta=0)
