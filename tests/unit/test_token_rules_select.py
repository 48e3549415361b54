"""Selecting token rules (random, ppl, rho1, tokencleaning): hand-worked examples, and the
pure functions against independent plain-Python rankings on random inputs."""

import math

import numpy as np
import pytest
import torch

from qtune.strategies import TokenInputs, build_token_rule
from qtune.strategies.qtuning_rules import token_mask
from qtune.strategies.token_base import drop_highest
from qtune.strategies.token_cleaning import tokencleaning_mask
from qtune.strategies.token_ppl import ppl_token_mask
from qtune.strategies.token_random import random_keys, random_token_mask, token_generator
from qtune.strategies.token_rho1 import rho1_token_mask
from qtune.strategies.token_scores import global_threshold, load_token_scores, save_token_scores, threshold_from_file
from qtune.strategies.token_scores import scatter_scores

LOSS = torch.tensor([[2.0, 1.0, 3.0, 0.5], [1.5, 4.0, 0.2, 9.9]])
REF = torch.tensor([[1.0, 1.5, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
RESP = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)


def keep_n(n, r):
    return 0 if n == 0 else max(1, math.ceil(round(n * r, 9)))


def plain_keep_top(score, resp, r, per_row):
    """Independent ranking: Python sorts over (score, position) lists; True = kept. Ties keep
    the later token (row-major), i.e. the earlier one is dropped first, as Q-Tuning's."""
    out = torch.zeros_like(resp)
    groups = [[(b, t) for t in range(resp.shape[1]) if resp[b, t]] for b in range(resp.shape[0])]
    if not per_row:
        groups = [[p for g in groups for p in g]]
    for g in groups:
        ranked = sorted(g, key=lambda p: (-float(score[p]), -p[0], -p[1]))
        for p in ranked[: keep_n(len(g), r)]:
            out[p] = True
    return out


def test_rho1_by_hand():
    # excess: row 0: 1.0, -0.5, 2.0, 0.5; row 1: 0.5, 3.0, 0.2, (no label)
    rule = build_token_rule("rho1")
    assert rule.keep_ratio == 0.6 and rule.scope == "batch" and rule.needs().reference_loss
    d = rule.apply(TokenInputs(loss=LOSS, response_mask=RESP, ref_loss=REF))
    assert d.weights.tolist() == [[1, 0, 1, 1], [1, 1, 0, 0]]  # ceil(0.6 * 7) = 5 kept
    assert (int(d.tokens_kept), int(d.tokens_trained), int(d.response_tokens)) == (5, 5, 7)
    assert float(d.reduce(LOSS)) == pytest.approx((2.0 + 3.0 + 0.5 + 1.5 + 4.0) / 5)
    # 4 of 7: the two 0.5s tie at the boundary, the earlier one is dropped
    mask = rho1_token_mask(LOSS, REF, RESP, 4 / 7)
    assert mask.tolist() == [[True, False, True, False], [True, True, False, False]]
    per_row = rho1_token_mask(LOSS, REF, RESP, 0.5, scope="sequence")  # 2 of 4, 2 of 3
    assert per_row.tolist() == [[True, False, True, False], [True, True, False, False]]


def test_rho1_needs_its_reference_loss():
    with pytest.raises(ValueError, match="ref_loss"):
        build_token_rule("rho1").apply(TokenInputs(loss=LOSS, response_mask=RESP))


@pytest.mark.parametrize("scope,per_row", [("batch", False), ("sequence", True)])
@pytest.mark.parametrize("r", [0.1, 0.37, 0.6, 1.0])
def test_rho1_matches_plain_ranking(scope, per_row, r):
    g = torch.Generator().manual_seed(7)
    loss, ref = torch.rand(5, 11, generator=g) * 4, torch.rand(5, 11, generator=g) * 4
    resp = torch.rand(5, 11, generator=g) < 0.7
    resp[3] = False  # a row without labels
    want = plain_keep_top(loss - ref, resp, r, per_row)
    assert torch.equal(rho1_token_mask(loss, ref, resp, r, scope), want)


def smoothed_plain(ppl, resp, lam):
    s = {}
    for b in range(ppl.shape[0]):
        for t in range(ppl.shape[1]):
            if resp[b, t]:
                nb = sum(float(ppl[b, u]) for u in (t - 1, t + 1) if 0 <= u < ppl.shape[1] and resp[b, u])
                s[b, t] = (1 - lam) * float(ppl[b, t]) + lam * nb
    return s


def test_ppl_by_hand_lambda_matters():
    ppl = torch.tensor([[2.0, 8.0, 1.0, 5.0, 1.0, 1.0]])
    resp = torch.ones_like(ppl, dtype=torch.bool)
    # lam 0: drop the three largest PPL (8, 5, 2); lam 0.5: s = 5, 5.5, 7, 3.5, 3.5, 1
    assert ppl_token_mask(ppl.log(), resp, 0.5, lam=0.0).tolist() == [[False, False, True, False, True, True]]
    assert ppl_token_mask(ppl.log(), resp, 0.5, lam=0.5).tolist() == [[False, False, False, True, True, True]]
    d = build_token_rule("ppl", lam=0.0).apply(TokenInputs(loss=ppl.log(), response_mask=resp))
    assert float(d.reduce(ppl.log())) == pytest.approx(0.0)  # the kept tokens have PPL 1


@pytest.mark.parametrize("lam", [0.0, 0.5])
@pytest.mark.parametrize("scope,per_row", [("sequence", True), ("batch", False)])
def test_ppl_matches_plain_formula_and_qtuning(lam, scope, per_row):
    g = torch.Generator().manual_seed(3)
    loss = torch.rand(4, 9, generator=g) * 3
    resp = torch.rand(4, 9, generator=g) < 0.8
    s = smoothed_plain(loss.double().exp(), resp, lam)
    score = torch.zeros(4, 9, dtype=torch.float64)
    for p, v in s.items():
        score[p] = -v  # keep the lowest smoothed PPL
    assert torch.equal(ppl_token_mask(loss, resp, 0.5, lam, scope), plain_keep_top(score, resp, 0.5, per_row))
    if scope == "sequence":  # the very function Q-Tuning's token stage uses
        rows = torch.ones(4, dtype=torch.bool)
        assert torch.equal(ppl_token_mask(loss, resp, 0.5, lam), token_mask(loss.double().exp(), resp, rows, 0.5, lam))


def test_random_tokens_are_seeded_by_seed_epoch_step_rank():
    resp = torch.rand(6, 40, generator=torch.Generator().manual_seed(0)) < 0.75
    rule = build_token_rule("random", seed=4)
    x = TokenInputs(loss=torch.zeros(6, 40), response_mask=resp, epoch=2, step=9)
    a, b = rule.apply(x).weights, build_token_rule("random", seed=4).apply(x).weights  # a resumed run
    assert torch.equal(a, b)
    for change in (dict(step=10), dict(epoch=3), dict(rank=1)):
        other = TokenInputs(loss=x.loss, response_mask=resp, **{**dict(epoch=2, step=9), **change})
        assert not torch.equal(a, rule.apply(other).weights), change
    assert not torch.equal(a, build_token_rule("random", seed=5).apply(x).weights)
    counts = a.sum(-1).tolist()
    assert counts == [keep_n(int(n), 0.5) for n in resp.sum(-1)] and not (a.bool() & ~resp).any()
    # the same draw written plainly: uniform keys, the lowest-keyed half kept
    u = torch.rand(resp.shape, generator=token_generator(4, 2, 9), dtype=torch.float64)
    assert torch.equal(a.bool(), plain_keep_top(-u, resp, 0.5, per_row=True))
    batch = random_token_mask(resp, 0.3, random_keys(resp.shape, 1, 0, 0), scope="batch")
    assert int(batch.sum()) == keep_n(int(resp.sum()), 0.3)


def test_random_tokens_with_sample_ids_follow_the_sample_not_the_batch():
    """With the batch's sample ids a row's draw depends on (seed, epoch, step, id) only: the
    same on any rank and in any batch; two micro-batches of one step draw differently."""
    resp = torch.ones(3, 12, dtype=torch.bool)
    rule = build_token_rule("random", seed=2, keep_ratio=0.25)

    def mask(ids, rank=0, step=5):
        x = TokenInputs(loss=torch.zeros(3, 12), response_mask=resp, step=step, rank=rank, sample_ids=torch.tensor(ids))
        return rule.apply(x).weights

    a = mask([7, 8, 9])
    b = mask([9, 3, 7], rank=1)
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[1], b[1]) and not torch.equal(a, mask([7, 8, 9], step=6))
    want = torch.rand(12, generator=token_generator(2, 0, 5, 8), dtype=torch.float64)
    assert torch.equal(a[1].bool(), plain_keep_top(-want.unsqueeze(0), resp[:1], 0.25, per_row=True)[0])


def test_random_tokens_are_uniform_over_positions():
    resp = torch.ones(1, 8, dtype=torch.bool)
    hits = sum(random_token_mask(resp, 0.25, random_keys(resp.shape, 0, 0, s)) for s in range(800)).float()
    assert hits.sum() == 1600 and (hits - 200).abs().max() < 45  # binomial sd ~ 12


def test_tokencleaning_global_threshold_from_a_score_file(tmp_path):
    per_sample = [torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0]), torch.tensor([]), torch.tensor([3.0, 0.0])]
    path = tmp_path / "tok.npz"
    save_token_scores(path, per_sample)
    offsets, score = load_token_scores(path, num_samples=4)
    assert offsets.tolist() == [0, 3, 4, 4, 6] and score.tolist() == [0.5, -1.0, 2.0, 1.0, 3.0, 0.0]
    thr = threshold_from_file(path, 0.5)  # 3 of 6 tokens: 3.0, 2.0, 1.0
    assert thr == 1.0 and global_threshold(score, 0.6) == 0.5
    resp = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    scores = scatter_scores(offsets, score, torch.tensor([0, 3, 1]), resp)
    assert scores[0, 1:4].tolist() == [0.5, -1.0, 2.0] and scores[1, :2].tolist() == [3.0, 0.0]
    assert torch.isnan(scores[~resp]).all()
    rule = build_token_rule("tokencleaning", threshold=thr)
    assert rule.needs().token_scores and not rule.needs().reference_model
    d = rule.apply(TokenInputs(loss=torch.ones(3, 5), response_mask=resp, score=scores))
    assert d.weights.bool().tolist() == [
        [False, False, False, True, False],
        [True, False, False, False, False],
        [True, False, False, False, False],
    ]
    shuffled = tmp_path / "shuffled.npz"  # rows in any order: read back by sample id
    np.savez(shuffled, sample_id=np.array([1, 0]), offsets=np.array([0, 1, 3]), score=np.array([9.0, 1.0, 2.0]))
    offsets2, score2 = load_token_scores(shuffled)
    assert offsets2.tolist() == [0, 2, 3] and score2.tolist() == [1.0, 2.0, 9.0]
    np.savez(shuffled, sample_id=np.array([0, 0]), offsets=np.array([0, 1, 3]), score=np.array([9.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="shuffled.npz"):
        load_token_scores(shuffled)
    with pytest.raises(ValueError, match="response tokens"):
        scatter_scores(offsets, score, torch.tensor([1, 0, 2]), resp)  # sample 1 has one score
    with pytest.raises(ValueError, match="threshold"):
        build_token_rule("tokencleaning").apply(TokenInputs(loss=torch.ones(3, 5), response_mask=resp, score=scores))
    resumed = build_token_rule("tokencleaning")
    resumed.load_state_dict(rule.state_dict())
    assert resumed.threshold == thr
    with pytest.raises(ValueError, match="strategy.token.threshold"):
        build_token_rule("tokencleaning", threshold=float("nan"))


def test_tokencleaning_per_sequence_from_base_and_reference_losses():
    base = torch.tensor([[3.0, 1.0, 2.0, 5.0]])
    ref = torch.tensor([[1.0, 1.5, 1.0, 4.5]])  # score 2.0, -0.5, 1.0, 0.5
    resp = torch.ones(1, 4, dtype=torch.bool)
    rule = build_token_rule("tokencleaning", scope="sequence", keep_ratio=0.5)
    assert rule.needs().base_loss and rule.needs().reference_loss
    d = rule.apply(TokenInputs(loss=torch.zeros(1, 4), response_mask=resp, base_loss=base, ref_loss=ref))
    assert d.weights.tolist() == [[1, 0, 1, 0]]
    g = torch.Generator().manual_seed(1)
    s, resp = torch.randn(6, 10, generator=g), torch.rand(6, 10, generator=g) < 0.6
    assert torch.equal(tokencleaning_mask(s, resp, 0.6, "sequence"), plain_keep_top(s, resp, 0.6, per_row=True))
    thr = global_threshold(s[resp], 0.6)
    assert torch.equal(tokencleaning_mask(s, resp, 0.6, "global", thr), plain_keep_top(s, resp, 0.6, per_row=False))


def test_drop_highest_nan_first_and_empty_rows():
    score = torch.tensor([[float("nan"), 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    resp = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    assert drop_highest(score, resp, 0.5, "sequence").tolist() == [[False, True, True, False], [False] * 4]
    assert drop_highest(score, resp, 0.01, "batch").sum() == 1
    with pytest.raises(ValueError, match="scope"):
        drop_highest(score, resp, 0.5, "global")
