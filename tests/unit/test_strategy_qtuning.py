"""Q-Tuning: bisection, quadrants, fill-up, token scores and budgets, policy and levels."""

import math

import numpy as np
import pytest
import torch

from qtune.pruning.statistics_store import StatisticsStore
from qtune.strategies import BatchStats, EpochContext, build_strategy
from qtune.strategies.qtuning import (
    normalize_scores,
    split_samples,
    token_mask,
    token_mask_batch_code,
)

NAN = float("nan")
PPL = torch.arange(1.0, 9.0)  # sample i has PPL i + 1
ENT = torch.tensor([7.0, 1, 4, 5, 3, 6, 2, 8])


def test_first_midpoint_hits_target():
    # a = 0.245: quantile position 0.245*7 = 1.715 -> P_lo = E_lo = 2.715, P_hi = E_hi = 6.285
    # s0 (1, 7) Q4, s1 (2, 1) Q3, s6 (7, 2) Q2, s7 (8, 8) Q1, rest middle; f = 2/8 = 0.25
    keep, quad, alpha = split_samples(PPL, ENT, 0.25)
    assert quad.tolist() == [4, 3, 0, 0, 0, 0, 2, 1]
    assert keep.tolist() == [True, False, False, False, False, False, True, False]
    assert float(alpha) == pytest.approx(0.245)


def test_bisection_widens_until_target():
    # a=0.245 f=.25<.5 -> a=0.3675 (P_lo 3.5725, P_hi 5.4275) f=.25 -> a=0.42875:
    # P_lo = E_lo = 4.00125, P_hi = E_hi = 4.99875 -> Q4 {0, 3}, Q2 {4, 6}, Q3 {1, 2}, Q1 {5, 7}
    keep, quad, alpha = split_samples(PPL, ENT, 0.5)
    assert float(alpha) == pytest.approx(0.42875)
    assert quad.tolist() == [4, 3, 3, 4, 2, 1, 2, 1]
    assert torch.nonzero(keep).flatten().tolist() == [0, 3, 4, 6]


def test_last_iterate_and_no_removal_above_target():
    # anti-correlated: one Q2 (ppl 8) and one Q4 (ppl 1) at every a < 0.245, f = 0.25 != 0.125
    keep, quad, alpha = split_samples(PPL, PPL.flip(0), 0.125)
    assert float(alpha) == pytest.approx(0.49 / 2**10)  # upper end halved 9 times, last midpoint
    assert keep.tolist() == [True] + [False] * 6 + [True]  # 2 > K = 1: nothing removed


def test_fill_up_by_normalised_gap_and_rank_option():
    ppl = torch.tensor([1.0, 2, 3, 4, 5])
    ent = torch.tensor([0.0, 0.1, 0.2, 3, 4])  # same order as ppl: Q2 and Q4 stay empty
    # minmax: p~ = 0,.25,.5,.75,1; e~ = 0,.025,.05,.75,1; gap = 0,.225,.45,0,0; K = round(2) = 2
    keep, quad, _ = split_samples(ppl, ent, 0.4)
    assert keep.tolist() == [False, True, True, False, False]
    assert not ((quad == 2) | (quad == 4)).any()
    # rank normalisation: identical ranks, all gaps 0, ties broken by index
    keep_r, _, _ = split_samples(ppl, ent, 0.4, normalize="rank")
    assert keep_r.tolist() == [True, True, False, False, False]
    # fill-up only draws from quadrants the policy keeps: all are Q2-like here
    keep_q4, _, _ = split_samples(ppl, ent, 0.4, kept_quadrants=(4,))
    assert not keep_q4.any()
    assert not split_samples(ppl, ent, 0.4, fill_up=False)[0].any()


def test_normalisations():
    x = torch.tensor([1.0, 3.0, 2.0, NAN, 3.0])
    assert normalize_scores(x, "minmax")[[0, 1, 2, 4]].tolist() == [0.0, 1.0, 0.5, 1.0]
    r = normalize_scores(x, "rank")
    assert r[[0, 2]].tolist() == [0.0, 1 / 3] and r[1] == r[4] == pytest.approx(2.5 / 3)
    assert torch.isnan(r[3]) and normalize_scores(torch.ones(3)).tolist() == [0.0, 0.0, 0.0]


def test_no_signal_samples_excluded():
    ppl = torch.cat([PPL, torch.tensor([NAN])])
    ent = torch.cat([ENT, torch.tensor([0.5])])
    keep, quad, alpha = split_samples(ppl, ent, 0.25)
    assert not keep[8] and quad[8] == 0
    assert keep[:8].tolist() == [True, False, False, False, False, False, True, False]
    assert not split_samples(torch.full((3,), NAN), torch.ones(3), 0.5)[0].any()


def reference_split(ppl, ent, r, tol=0.01, max_iter=10):
    """Plain numpy transcription of the official loop (break, numpy quantiles, top-up)."""
    b = len(ppl)
    lo, hi = 0.0, 0.49
    for _ in range(max_iter):
        a = (lo + hi) / 2
        q2 = (ppl > np.quantile(ppl, 1 - a)) & (ent <= np.quantile(ent, a))
        q4 = (ppl <= np.quantile(ppl, a)) & (ent > np.quantile(ent, 1 - a))
        f = (q2 | q4).sum() / b
        if abs(f - r) < tol:
            break
        if f < r:
            lo = a
        else:
            hi = a
    keep = q2 | q4
    k = max(1, round(b * r))
    if keep.sum() < k:
        mm = lambda x: (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)  # noqa: E731
        gap = np.abs(mm(ppl) - mm(ent))
        rest = sorted((i for i in range(b) if not keep[i]), key=lambda i: (-gap[i], i))
        keep[rest[: k - keep.sum()]] = True
    return keep, a


@pytest.mark.parametrize("b,r", [(8, 0.125), (8, 0.25), (8, 0.5), (16, 0.25), (32, 0.5), (5, 0.3)])
def test_matches_reference_on_random_batches_with_ties(b, r):
    rng = np.random.default_rng(b * 100 + int(r * 1000))
    for _ in range(40):
        z = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], size=b)
        ppl, ent = np.round(np.exp(z[:, 0]), 1), np.round(np.exp(z[:, 1]), 1)
        keep, _, alpha = split_samples(torch.tensor(ppl), torch.tensor(ent), r)
        ref_keep, ref_a = reference_split(ppl, ent, r)
        assert keep.numpy().tolist() == ref_keep.tolist()
        assert float(alpha) == pytest.approx(ref_a)


def test_token_mask_hand_worked():
    ppl = torch.tensor([[9.0, 1, 4, 2, 8, 1]])
    resp = torch.tensor([[False, True, True, True, True, True]])
    # s = .5*ppl + .5*(left + right), prompt neighbour 0: [2.5, 3.5, 7, 5.5, 4.5] on positions 1..5
    # keep ceil(0.5*5) = 3 -> drop positions 3 (7) and 4 (5.5)
    m = token_mask(ppl, resp, torch.tensor([True]), 0.5, lam=0.5)
    assert m.tolist() == [[False, True, True, False, False, True]]
    # lam = 0: own PPL only -> drop 8 (pos 4) and 4 (pos 2)
    assert token_mask(ppl, resp, torch.tensor([True]), 0.5, lam=0.0).tolist() == [
        [False, True, False, True, False, True]
    ]
    # rows not in prune_rows and token_ratio 1 keep every response token
    assert torch.equal(token_mask(ppl, resp, torch.tensor([False]), 0.5), resp)
    assert torch.equal(token_mask(ppl, resp, torch.tensor([True]), 1.0), resp)


def test_token_mask_counts_ties_and_minimum():
    resp = torch.ones(1, 10, dtype=torch.bool)
    flat = torch.ones(1, 10)
    assert int(token_mask(flat, resp, torch.tensor([True]), 0.7).sum()) == 7  # not ceil(7.000001)
    m = token_mask(flat, resp, torch.tensor([True]), 0.5, lam=0.0)
    assert m.tolist() == [[False] * 5 + [True] * 5]  # ties: earlier dropped first
    one = torch.tensor([[False, True, False]])
    assert token_mask(torch.ones(1, 3), one, torch.tensor([True]), 0.1).tolist() == [[False, True, False]]
    rng = torch.Generator().manual_seed(0)
    resp = torch.rand(6, 20, generator=rng) > 0.3
    m = token_mask(torch.rand(6, 20, generator=rng) * 5, resp, torch.ones(6, dtype=torch.bool), 0.3)
    for i in range(6):
        n = int(resp[i].sum())
        assert int(m[i].sum()) == (max(1, math.ceil(0.3 * n)) if n else 0)
        assert not (m[i] & ~resp[i]).any()


def test_batch_code_budget_masks_whole_q2_row():
    # B=4, each row 4 prompt + 2 response, all attended: N_all 24, target round(24*.5*.5) = 6,
    # rows 2, 3 dropped remove 12 -> D = 6, capped at row 0's 2 response tokens
    resp = torch.zeros(4, 6, dtype=torch.bool)
    resp[:, 4:] = True
    keep = torch.tensor([True, True, False, False])
    prune = torch.tensor([True, False, False, False])
    m = token_mask_batch_code(torch.ones(4, 6) * 2, resp, torch.ones(4, 6, dtype=torch.bool), keep, prune, 0.5, 0.5)
    assert not m[0].any() and m[1].tolist() == [False] * 4 + [True, True]


def test_batch_code_global_ranking_with_prompt_neighbour_one():
    ppl = torch.tensor([[9.0, 1, 4, 2, 8, 1], [9.0, 1, 1, 1, 1, 1]])
    resp = torch.tensor([[False] + [True] * 5] * 2)
    att = torch.ones(2, 6, dtype=torch.bool)
    keep = torch.tensor([True, True])
    # N_all 12, target round(12*1*.75) = 9, D = 3 over both prune rows; prompt neighbour = 1:
    # row 0 s = [3, 3.5, 7, 5.5, 4.5]; row 1 s = [1.5, 1.5, 1.5, 1.5, 1] -> drop row 0 pos 3, 4, 5
    m = token_mask_batch_code(ppl, resp, att, keep, keep, 1.0, 0.75)
    assert m[0].tolist() == [False, True, True, False, False, False]
    assert torch.equal(m[1], resp[1])


def stats(ppl, ent, t=6, token_entropy=None, attention=None, ids=None):
    b = len(ppl)
    resp = torch.zeros(b, t, dtype=torch.bool)
    resp[:, 2:] = True
    tl = torch.log(torch.arange(1.0, t + 1)).repeat(b, 1)
    return BatchStats(
        sample_ids=torch.arange(b) if ids is None else ids,
        sample_loss=ppl.log(),
        sample_ppl=ppl,
        sample_entropy=ent,
        token_loss=tl,
        token_entropy=torch.ones(b, t) if token_entropy is None else token_entropy,
        response_mask=resp,
        attention_mask=attention,
    )


def test_batch_plan_default_policy():
    strat = build_strategy("qtuning", sample_ratio=0.25, token_ratio=0.5)
    assert strat.uses_batch_plan and strat.batch_scoring == "separate" and strat.level == "batch"
    plan = strat.batch_plan(stats(PPL, ENT))
    assert plan.keep.tolist() == [True, False, False, False, False, False, True, False]
    # Q2 row 6 keeps ceil(.5*4) = 2 of its 4 response tokens; Q4 row 0 keeps all 4
    assert plan.token_mask[0].sum() == 4 and plan.token_mask[6].sum() == 2
    assert not plan.token_mask[~plan.keep].any()
    assert int(plan.info["q2"]) == 1 and int(plan.info["q4"]) == 1 and int(plan.info["fill_up"]) == 0
    assert int(plan.info["tokens_kept"]) == 6


def test_policy_changes_actions():
    strat = build_strategy("qtuning", sample_ratio=0.25, policy={"q2": "keep"})
    assert strat.batch_plan(stats(PPL, ENT)).token_mask[6].sum() == 4  # Q2 kept whole
    drop_q2 = build_strategy("qtuning", sample_ratio=0.125, policy={"q2": "drop"})
    keep = drop_q2.batch_plan(stats(PPL, ENT)).keep
    assert not keep[6] and keep[0]
    with pytest.raises(ValueError, match="strategy.policy"):
        build_strategy("qtuning", policy={"q5": "keep"})
    with pytest.raises(ValueError, match="strategy.policy"):
        build_strategy("qtuning", policy={"q1": "maybe"})


def test_entropy_scope_all_uses_attended_tokens():
    te = torch.ones(8, 6)  # every sample's all-token entropy is 1: no one has high entropy
    st = stats(PPL, ENT, token_entropy=te, attention=torch.ones(8, 6, dtype=torch.bool))
    # Ent all equal: Ent <= E_lo for all, none > E_hi -> Q2 = PPL > 6.285 = rows 6, 7 at a=0.245
    keep = build_strategy("qtuning", entropy_scope="all").batch_plan(st).keep
    assert torch.nonzero(keep).flatten().tolist() == [6, 7]


def test_rows_without_response_never_kept():
    st = stats(PPL, ENT)
    st.response_mask[0] = False
    plan = build_strategy("qtuning").batch_plan(st)
    assert not plan.keep[0]


def test_epoch_level_plan_and_in_batch_token_stage():
    n = 8
    store = StatisticsStore(n)
    store.update(torch.arange(n), 0, loss=PPL.log(), entropy=ENT, track_dynamics=False)
    strat = build_strategy("qtuning", level="epoch", sample_ratio=0.25)
    assert strat.batch_scoring == "reuse"
    ctx = EpochContext(1, 3, n, 0, store)
    assert strat.needs_scoring_pass(ctx)
    plan = strat.epoch_plan(ctx)
    assert plan.sample_ids.tolist() == [0, 6] and plan.info["q2"] == 1
    bp = strat.batch_plan(stats(PPL[[6, 0]], ENT[[6, 0]], ids=torch.tensor([6, 0])))
    assert bp.keep.all()
    assert bp.token_mask[0].sum() == 2 and bp.token_mask[1].sum() == 4  # only Q2 id 6 pruned


def test_epoch_level_without_scores_is_full_data():
    strat = build_strategy("qtuning", level="epoch")
    plan = strat.epoch_plan(EpochContext(0, 3, 5, 0, StatisticsStore(5)))
    assert plan.sample_ids.tolist() == list(range(5))


@pytest.mark.parametrize(
    "key,value",
    [
        ("level", "step"),
        ("batch_scoring", "x"),
        ("scoring", "reuse"),  # the old name: refused, naming batch_scoring
        ("entropy_scope", "p"),
        ("token_budget", "y"),
        ("loss_denominator", "z"),
        ("normalize", "zscore"),
        ("sample_ratio", 0),
    ],
)
def test_config_errors(key, value):
    with pytest.raises(ValueError, match=f"strategy.{key}"):
        build_strategy("qtuning", **{key: value})
