"""The fast epoch plans choose exactly what the old, slow ones chose (``plan_reference``).

Plan ids feed the sampler's shuffle in plan order and run histories compare plan hashes, so
"the same plan" means equal id tensors (the same ids in the same, ascending, order), equal
weights and loss info, on stores full of ties, NaN, ±0 and ±inf, at odd sizes and over epochs.
"""

import random

import plan_reference as ref
import pytest
import torch

from qtune.pruning.core import plan_hash
from qtune.pruning.statistics_store import StatisticsStore
from qtune.strategies import EpochContext, build_strategy
from qtune.strategies.ccs import select_ccs
from qtune.strategies.counting import first_mask, nan_last_order, order_key, ranked_slice
from qtune.strategies.denoise import denoise_plan
from qtune.strategies.el2n import select_el2n
from qtune.strategies.rs2 import rs2_plan

SIZES = [1, 2, 7, 64, 101, 1797, 4099]  # 1797: the digits training set's shape


def tied(n: int, seed: int, levels: int = 9, nan: float = 0.1, extremes: bool = False) -> torch.Tensor:
    """Scores from a few levels (many ties), some NaN; with ``extremes`` also ±0 and ±inf."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, (n,), generator=g).double() / levels
    x = torch.where(torch.rand(n, generator=g) < 0.3, torch.rand(n, generator=g, dtype=torch.float64), x)
    if extremes:
        pick = torch.randint(0, 6, (n,), generator=g)
        special = torch.tensor([-0.0, 0.0, float("inf"), -float("inf"), -1.5, 2.0], dtype=torch.float64)
        x = torch.where(torch.rand(n, generator=g) < 0.2, special[pick], x)
    x[torch.rand(n, generator=g) < nan] = float("nan")
    return x


def filled_store(n: int, seed: int, nan: float = 0.05, same_nan: bool = True) -> StatisticsStore:
    st = StatisticsStore(n)
    vals = {k: tied(n, seed + i, nan=0.0).float() for i, k in enumerate(("loss", "entropy", "el2n", "p_label"))}
    vals["margin"] = vals["p_label"] - 0.5
    vals["accuracy"] = (vals["p_label"] > 0.5).float()
    st.update(torch.arange(n), 0, num_tokens=torch.full((n,), 4), **vals)
    g = torch.Generator().manual_seed(seed + 99)
    holes = torch.rand(n, generator=g) < nan
    for k in ("loss", "entropy", "el2n", "p_label"):
        getattr(st, k)[holes] = float("nan")
        if not same_nan:  # entropy NaN where loss is not: each normalises over its own rows
            holes = torch.rand(n, generator=g) < nan
    st.seen_epoch[holes] = -1
    return st


def test_order_helpers_match_the_stable_float_sort():
    for t in range(300):
        n = t % 41 + 1
        x = tied(n, t, levels=4, nan=0.2, extremes=True)
        for desc in (True, False):
            old = ref.nan_last_order(x, desc)
            assert torch.equal(nan_last_order(x, desc), old)
            assert torch.equal(torch.sort(order_key(x, desc), stable=True).indices, old)
            i, j = sorted(random.Random(t).sample(range(n + 1), 2)) if n else (0, 0)
            assert torch.equal(ranked_slice(x, i, j, desc), old[i:j].sort().values)
            mask = first_mask(order_key(x, desc), j)
            assert torch.equal(torch.nonzero(mask).flatten(), old[:j].sort().values)


@pytest.mark.parametrize("dtype", [torch.long, torch.int32])
def test_plan_hash_values_unchanged(dtype):
    g = torch.Generator().manual_seed(0)
    cases = [torch.zeros(0), torch.tensor([5]), torch.arange(100), torch.randperm(100, generator=g)]
    cases += [torch.tensor([3, 3, 1, 2, 2]), torch.tensor([1, 2, 2, 3]), torch.arange(10).flip(0)]
    for ids in cases:
        ids = ids.to(dtype)
        assert plan_hash(ids) == ref.plan_hash(ids)
    assert plan_hash(torch.tensor([0, 1])) != plan_hash(torch.tensor([0, 2]))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 13, 101])
def test_rs2_equal_at_every_epoch_warm_cold_and_out_of_order(n):
    for r in (0.01, 0.1, 0.3, 0.35, 0.5, 0.51, 0.7, 0.9, 1.0):
        for seed in (0, 5):
            old = [ref.rs2_plan(n, r, e, seed) for e in range(25)]
            cache: dict = {}
            for e in range(25):
                assert torch.equal(rs2_plan(n, r, e, seed), old[e]), (r, seed, e)
                assert torch.equal(rs2_plan(n, r, e, seed, cache=cache), old[e]), (r, seed, e)
            order = list(range(25))
            random.Random(n).shuffle(order)
            for e in order:  # a resume jumps: the cache must never leak another cycle's queue
                assert torch.equal(rs2_plan(n, r, e, seed, cache=cache), old[e]), (r, seed, e)
            for e in (0, 3, 11):
                assert torch.equal(rs2_plan(n, r, e, seed, True), ref.rs2_plan(n, r, e, seed, True))


def test_rs2_strategy_plans_equal_over_a_run():
    strat = build_strategy("rs2", seed=3, keep_ratio=0.7)
    for e in list(range(12)) + [4, 30, 29]:
        plan = strat.epoch_plan(EpochContext(e, 40, 1797, 3, None))
        assert torch.equal(plan.sample_ids, ref.rs2_plan(1797, 0.7, e, 3))


@pytest.mark.parametrize("n", SIZES)
def test_el2n_selection_equal(n):
    for seed in range(3):
        s = tied(n, seed, nan=0.15, extremes=seed == 2).float()
        for keep, offset in ((0.5, 0.0), (0.3, 0.1), (0.01, 0.0), (1.0, 0.0), (0.2, 0.9)):
            assert torch.equal(select_el2n(s, keep, offset), ref.select_el2n(s, keep, offset))
    st = filled_store(n, 1)
    strat = build_strategy("el2n", keep_ratio=0.4, offset=0.05, warmup_epochs=1)
    for e in range(3):
        plan = strat.epoch_plan(EpochContext(e, 3, n, 0, st))
    assert torch.equal(plan.sample_ids, ref.select_el2n(st.el2n, 0.4, 0.05))


@pytest.mark.parametrize("n", SIZES)
def test_ccs_selection_equal(n):
    for seed in range(3):
        s = tied(n, seed, nan=0.2, extremes=seed == 1)
        for keep, beta, bins in ((0.5, 0.1, 50), (0.2, 0.0, 7), (0.9, 0.1, 1), (0.05, 0.3, 50), (0.6, 0.4, 3)):
            new = select_ccs(s, keep, beta, bins, torch.Generator().manual_seed(seed))
            old = ref.select_ccs(s, keep, beta, bins, torch.Generator().manual_seed(seed))
            assert torch.equal(new, old), (seed, keep, beta, bins)
    flat = torch.full((n,), 0.25, dtype=torch.float64)
    assert torch.equal(select_ccs(flat, 0.5, 0.1), ref.select_ccs(flat, 0.5, 0.1))
    none = torch.full((n,), float("nan"))
    assert torch.equal(select_ccs(none, 0.5, 0.1), ref.select_ccs(none, 0.5, 0.1))
    st = filled_store(n, 2)
    for column in ("el2n", "aum"):
        strat = build_strategy("ccs", seed=4, keep_ratio=0.3, score_column=column, warmup_epochs=1)
        plan = strat.epoch_plan(EpochContext(1, 3, n, 4, st))
        raw = strat._scores(EpochContext(1, 3, n, 4, st))
        from qtune.strategies.base import epoch_generator

        old = ref.select_ccs(raw, 0.3, 0.1, 50, epoch_generator(4, 1, 0xCC5))
        assert torch.equal(plan.sample_ids, old), column


@pytest.mark.parametrize("n", SIZES)
def test_denoise_plan_equal(n):
    for seed in range(3):
        loss, ent = tied(n, seed, nan=0.1), tied(n, seed + 50, nan=0.1, extremes=seed == 2)
        for keep, frac, w in ((0.5, 0.05, 0.5), (0.9, 0.3, 1.0), (0.01, 0.0, 0.0), (1.0, 0.5, 2.0)):
            new = denoise_plan(loss, ent, keep, frac, w, torch.Generator().manual_seed(seed))
            old = ref.denoise_plan(loss, ent, keep, frac, w, torch.Generator().manual_seed(seed))
            assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1]), (seed, keep, frac, w)
    st = filled_store(n, 3, same_nan=False)
    strat = build_strategy("denoise", seed=2, keep_ratio=0.6, warmup_epochs=1)
    for e in range(4):
        plan = strat.epoch_plan(EpochContext(e, 4, n, 2, st))
        if e >= 1:
            from qtune.strategies.base import epoch_generator

            frac = strat._auto_share
            assert frac == ref.estimated_noise_share(st.p_label, 0.5)
            old = ref.denoise_plan(st.loss, st.entropy, 0.6, frac, 0.5, epoch_generator(2, e, 0xDE))
            assert torch.equal(plan.sample_ids, old[0]) and plan.info["suspects"] == old[1].numel()


@pytest.mark.parametrize("n", SIZES)
def test_seta_plans_equal_over_epochs(n):
    for opts, store in (
        (dict(p=0.3, k=5, w=0.6, delta=0.75), filled_store(n, 4)),
        (dict(p=0.1, k=3, w=0.5, delta=1.0), filled_store(n, 5, nan=0.5)),
        (dict(p=0.2, k=12, w=0.9, delta=1.0), filled_store(n, 6)),  # k > levels: few distinct
    ):
        strat = build_strategy("seta", seed=7, **opts)
        for e in range(8):
            ctx = EpochContext(e, 8, n, 7, store)
            plan, (ids, info) = strat.epoch_plan(ctx), ref.seta_plan(strat, ctx)
            assert torch.equal(plan.sample_ids, ids) and plan.info == info, (opts, e)
    for levels in (1, 3, 5, 6):  # fewer, as many and more distinct losses than groups
        st = filled_store(n, 8)
        g = torch.Generator().manual_seed(levels)
        st.loss.copy_((torch.randint(0, levels, (n,), generator=g) * 0.7).float())
        st.loss[::7] = float("nan")
        strat = build_strategy("seta", seed=3, k=5, w=0.4)
        for e in range(4):
            ctx = EpochContext(e, 8, n, 3, st)
            plan, (ids, info) = strat.epoch_plan(ctx), ref.seta_plan(strat, ctx)
            assert torch.equal(plan.sample_ids, ids) and plan.info == info, (levels, e)
    empty = StatisticsStore(n)  # never scored: every loss NaN
    strat = build_strategy("seta", seed=1)
    ctx = EpochContext(2, 8, n, 1, empty)
    assert torch.equal(strat.epoch_plan(ctx).sample_ids, ref.seta_plan(strat, ctx)[0])


def test_seta_groups_when_the_first_values_hide_the_distinct_ones():
    from qtune.strategies.seta import seta_groups

    for tail in ([1.0, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [float("nan"), 3.0]):
        x = torch.cat([torch.zeros(5000, dtype=torch.float64), torch.tensor(tail, dtype=torch.float64)])
        x = torch.cat([x, x.flip(0)])
        assert torch.equal(seta_groups(x, 5), ref.seta_groups(x, 5)), tail


QTUNING_OPTIONS = [
    dict(),
    dict(sample_ratio=0.6, tol=1e-9),  # every bisection step runs
    dict(sample_ratio=0.1, normalize="rank"),
    dict(sample_ratio=0.9, fill_up=False),
    dict(policy={"q1": "keep", "q3": "prune", "q4": "drop"}),
    dict(policy={"q2": "drop", "q4": "prune"}, sample_ratio=0.4),
    dict(policy={"q1": "keep", "q2": "drop", "q3": "prune", "q4": "drop"}, sample_ratio=0.7),  # no fill-up
]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("opts", QTUNING_OPTIONS)
def test_qtuning_epoch_plans_equal(n, opts):
    for seed, same_nan in ((0, True), (1, False), (2, True)):
        st = filled_store(n, 10 + seed, nan=0.1 * seed, same_nan=same_nan)
        strat = build_strategy("qtuning", seed=0, level="epoch", **opts)
        plan = strat.epoch_plan(EpochContext(1, 3, n, 0, st))
        ids, prune_rows, counts, alpha = ref.qtuning_epoch(strat, st.ppl.double(), st.entropy.double())
        if ids.numel() == 0:
            ids, prune_rows = torch.arange(n), None
        assert torch.equal(plan.sample_ids, ids)
        assert plan.weights is None
        if prune_rows is None:
            assert strat._prune_ids is None
        else:
            assert torch.equal(strat._prune_ids, prune_rows)
        assert {k: plan.info[k] for k in counts} == counts and plan.info["alpha"] == alpha
        assert plan_hash(plan.sample_ids) == ref.plan_hash(ids)
