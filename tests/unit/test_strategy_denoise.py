"""denoise: suspicion by store-wide ranks, suspects left out, the epoch filled from the rest."""

from __future__ import annotations

import pytest
import torch

from qtune.pruning.statistics_store import StatisticsStore
from qtune.strategies import EpochContext, build_strategy
from qtune.strategies.denoise import denoise_plan, estimated_noise_share, suspicion, unit_ranks

NAN = float("nan")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_unit_ranks_hand_worked():
    r = unit_ranks(torch.tensor([3.0, 1.0, 2.0, NAN, 2.0]))
    # finite values 3, 1, 2, 2 -> ranks 3, 0, 1, 2 (ties by index) over 3
    assert r[:3].tolist() == [1.0, 0.0, 1 / 3] and torch.isnan(r[3]) and r[4] == 2 / 3
    assert unit_ranks(torch.tensor([NAN, 5.0]))[1] == 0.5


def test_suspicion_is_rank_of_loss_minus_weighted_rank_of_entropy():
    loss = torch.tensor([0.1, 5.0, 4.0, 0.2])
    entropy = torch.tensor([0.3, 0.1, 2.0, NAN])  # sample 3 has no entropy: no suspicion
    s = suspicion(loss, entropy, entropy_weight=1.0)
    # among samples 0-2: loss ranks 0, 1, 0.5; entropy ranks 0.5, 0, 1
    assert s[:3].tolist() == pytest.approx([-0.5, 1.0, -0.5]) and torch.isnan(s[3])
    assert suspicion(loss, entropy, 0.0)[:3].tolist() == pytest.approx([0.0, 1.0, 0.5])


def test_plan_leaves_out_the_suspects_and_fills_from_the_rest():
    # ten samples; 7 and 2 are confident and wrong (highest loss, lowest entropy)
    loss = torch.tensor([1.0, 1.1, 9.0, 1.2, 1.3, 1.4, 1.5, 8.0, 1.6, 1.7])
    entropy = torch.tensor([2.0, 2.1, 0.1, 2.2, 2.3, 2.4, 2.5, 0.2, 2.6, 2.7])
    kept, suspects = denoise_plan(
        loss, entropy, keep_ratio=0.5, suspect_fraction=0.2, entropy_weight=1.0, generator=gen()
    )
    assert suspects.tolist() == [2, 7]
    assert kept.numel() == 5 and not set(kept.tolist()) & {2, 7}
    assert kept.tolist() == sorted(set(kept.tolist()))
    again, _ = denoise_plan(loss, entropy, 0.5, 0.2, 1.0, gen())
    assert torch.equal(kept, again)  # a pure function of its inputs
    everything, _ = denoise_plan(loss, entropy, 1.0, 0.2, 1.0, gen())
    assert everything.tolist() == [0, 1, 3, 4, 5, 6, 8, 9]  # fewer left than asked: all


def test_unscored_samples_are_never_suspects():
    loss = torch.tensor([NAN, NAN, 1.0, 9.0, 2.0])
    entropy = torch.tensor([NAN, NAN, 1.0, 0.1, 1.5])
    kept, suspects = denoise_plan(loss, entropy, 1.0, 0.5, 1.0, gen())
    assert suspects.tolist() == [3]  # floor(0.5 x 3 scored) = 1
    assert kept.tolist() == [0, 1, 2, 4]


def test_planted_noise_is_found_at_any_scale():
    """A property: wrong labels planted with high loss and low entropy are all suspects,
    whatever the scale of the clean scores (ranks ignore extreme values)."""
    g = gen(3)
    n, noisy = 400, torch.arange(0, 400, 5)  # 20 %
    loss, entropy = torch.rand(n, generator=g), 1 + torch.rand(n, generator=g)
    loss[7] = 1e6  # one extreme perplexity, which min-max scaling would let dominate
    loss[noisy] = 2 + torch.rand(noisy.numel(), generator=g)
    entropy[noisy] = 0.5 * torch.rand(noisy.numel(), generator=g)
    _, suspects = denoise_plan(loss, entropy, 0.5, 0.2, 1.0, gen())
    assert set(suspects.tolist()) == set(noisy.tolist())


def test_strategy_warms_up_on_all_data_then_plans_from_the_store():
    s = build_strategy("denoise", seed=1, keep_ratio=0.25, suspect_fraction=0.1, warmup_epochs=1)
    store = StatisticsStore(40)
    ctx = EpochContext(epoch=0, max_epochs=3, num_samples=40, seed=1, scores=store)
    assert s.epoch_plan(ctx).sample_ids.tolist() == list(range(40))
    assert not s.needs_scoring_pass(ctx)  # the training forward fills the store
    store.update(
        torch.arange(40),
        0,
        loss=torch.linspace(0, 1, 40),
        entropy=torch.linspace(1, 0, 40),
        num_tokens=torch.full((40,), 3),
    )
    plan = s.epoch_plan(EpochContext(1, 3, 40, 1, store))
    assert plan.sample_ids.numel() == 10 and plan.info["suspects"] == 4
    assert not set(plan.sample_ids.tolist()) & {36, 37, 38, 39}


def test_default_warm_up_is_two_full_epochs_and_the_second_epochs_scores_decide():
    """The first epoch's scores drift with the model inside that epoch, so by default they
    never decide: epochs 0 and 1 train everything, epoch 2 plans from epoch 1's scores."""
    s = build_strategy("denoise", seed=0, keep_ratio=0.5, suspect_fraction=0.25)
    assert s.warmup_cost() == {"epochs": 2, "scoring_passes": 0}
    store = StatisticsStore(8)
    # epoch 0: samples 0-1 look worst; epoch 1 (the model has moved): samples 6-7 do
    store.update(
        torch.arange(8),
        0,
        loss=torch.tensor([9.0, 8, 1, 1, 1, 1, 1, 1]),
        entropy=torch.zeros(8),
        num_tokens=torch.full((8,), 2),
    )
    assert s.epoch_plan(EpochContext(1, 4, 8, 0, store)).sample_ids.tolist() == list(range(8))
    store.update(
        torch.arange(8),
        1,
        loss=torch.tensor([1.0, 1, 1, 1, 1, 1, 8, 9]),
        entropy=torch.zeros(8),
        num_tokens=torch.full((8,), 2),
    )
    plan = s.epoch_plan(EpochContext(2, 4, 8, 0, store))
    assert plan.sample_ids.numel() == 4 and plan.info["suspects"] == 2
    assert not set(plan.sample_ids.tolist()) & {6, 7}


def test_estimated_noise_share_counts_scored_samples_below_the_label_probability():
    p = torch.tensor([0.9, 0.2, float("nan"), 0.49, 0.5, 0.99, float("nan"), 0.1])
    assert estimated_noise_share(p, 0.5) == pytest.approx(3 / 6)  # 0.2, 0.49, 0.1 of six scored
    assert estimated_noise_share(p, 0.1) == 0.0  # strictly below
    assert estimated_noise_share(torch.full((4,), float("nan")), 0.5) == 0.0


def _store(p_label, epoch=0, store=None):
    store = store or StatisticsStore(10)
    store.update(
        torch.arange(10),
        epoch,
        loss=torch.arange(10, dtype=torch.float32),
        entropy=torch.ones(10),
        p_label=p_label,
        num_tokens=torch.full((10,), 2),
    )
    return store


def test_auto_suspect_fraction_is_estimated_once_from_the_label_probability():
    """auto: the count comes from p_label < auto_label_prob at the first decision, the choice
    from the suspicion ranks (sample 9 has the highest loss); the count is then kept, even
    when the left-in samples' label probability rises, and travels in the state dict."""
    s = build_strategy("denoise", seed=0, keep_ratio=1.0, warmup_epochs=1)
    assert s.suspect_fraction == "auto" and s.auto_label_prob == 0.5
    store = _store(torch.tensor([0.9] * 7 + [0.3, 0.9, 0.2]))  # two below 0.5: 7 and 9
    plan = s.epoch_plan(EpochContext(1, 4, 10, 0, store))
    assert plan.info["suspect_fraction"] == pytest.approx(0.2) and plan.info["suspects"] == 2
    assert plan.sample_ids.tolist() == list(range(8))  # the two highest-ranked: 8 and 9, not 7
    _store(torch.full((10,), 0.9), epoch=1, store=store)  # everything now looks learned
    assert s.epoch_plan(EpochContext(2, 4, 10, 0, store)).info["suspects"] == 2
    resumed = build_strategy("denoise", seed=0, keep_ratio=1.0, warmup_epochs=1)
    resumed.load_state_dict(s.state_dict())
    assert resumed.epoch_plan(EpochContext(3, 4, 10, 0, store)).info["suspects"] == 2
    clean = build_strategy("denoise", seed=0, keep_ratio=1.0, warmup_epochs=1)
    plan = clean.epoch_plan(EpochContext(1, 4, 10, 0, _store(torch.full((10,), 0.9))))
    assert plan.info["suspects"] == 0 and plan.sample_ids.tolist() == list(range(10))


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("keep_ratio", 0.0, "strategy.keep_ratio=0.0 is out of range"),
        ("suspect_fraction", 1.0, "strategy.suspect_fraction=1.0 is out of range"),
        ("entropy_weight", -1.0, "strategy.entropy_weight=-1.0 must be >= 0"),
        ("warmup_epochs", -1, "strategy.warmup_epochs=-1 must be >= 0"),
        ("auto_label_prob", 0.0, "strategy.auto_label_prob=0.0 is out of range"),
        ("suspect_fraction", "most", "strategy.suspect_fraction='most' must be a fraction in"),
    ],
)
def test_bad_options_name_their_key(option, value, message):
    with pytest.raises(ValueError, match=message):
        build_strategy("denoise", **{option: value})
