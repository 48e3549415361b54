"""train_step on a packed batch gives the padded batch's per-sample statistics, loss and
counters (a random Llama, fp32, samples of odd lengths); Q-Tuning's batch plan sees the same
BatchStats and trains the same tokens of re-packed rows."""

from __future__ import annotations

import pytest
import torch
from packed_reference import make_items, packed_and_padded

from qtune.pruning.batch_stats import lm_stats
from qtune.pruning.packed_step import repack
from qtune.pruning.segments import SegmentMap
from qtune.pruning.train_step import train_step
from qtune.strategies import build_strategy

TOL = dict(rtol=1e-5, atol=1e-5)
FIELDS = ("loss", "entropy", "el2n", "p_label", "margin", "accuracy")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tiny_hf import save_tiny_llama
    from transformers import LlamaForCausalLM

    path = save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")
    return LlamaForCausalLM.from_pretrained(str(path), attn_implementation="sdpa").eval()


def batches(model, seed: int, num: int = 19, cap: int = 30):
    vocab = model.config.vocab_size
    packed, padded = packed_and_padded(make_items(num, seed, vocab=vocab), cap=cap, seed=seed)
    assert packed["input_ids"].shape[0] < num  # rows hold several samples
    return packed, padded


def stats_fn(model):
    return lambda batch, labels=None: lm_stats(model, batch, labels, backend="torch")


def step_and_grads(model, batch, strategy, epoch=0, step=0):
    model.zero_grad()
    record = train_step(stats_fn(model), batch, strategy, epoch, step)
    record.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return record, grads


def assert_same_record(got, want, grads_got, grads_want):
    assert torch.equal(got.sample_ids, want.sample_ids)
    torch.testing.assert_close(got.loss, want.loss, **TOL)
    for k in FIELDS:
        torch.testing.assert_close(got.scores[k], want.scores[k], equal_nan=True, msg=k, **TOL)
    assert torch.equal(got.scores["num_tokens"], want.scores["num_tokens"])
    for k in ("samples_trained", "tokens_trained"):
        assert float(getattr(got, k)) == float(getattr(want, k)), k
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("weighted", [False, True])
def test_packed_train_step_equals_padded(model, seed, weighted):
    packed, padded = batches(model, seed)
    if weighted:  # InfoBatch-like per-sample weights, on the batch as the loader puts them
        w = torch.rand(padded["sample_id"].numel(), generator=torch.Generator().manual_seed(seed)) * 2
        packed, padded = dict(packed, sample_weight=w), dict(padded, sample_weight=w)
    got, g_got = step_and_grads(model, packed, None)
    want, g_want = step_and_grads(model, padded, None)
    assert_same_record(got, want, g_got, g_want)
    # forward tokens: the samples' tokens, not the rows' padding
    assert int(got.forward_tokens) == int(packed["sample_length"].sum()) == int(padded["attention_mask"].sum())
    assert int(got.forward_tokens) < packed["input_ids"].numel() or (packed["seg"] >= 0).all()


@pytest.mark.parametrize("rule,options", [("ppl", {"scope": "sequence"}), ("ppl", {"scope": "batch"}), ("dft", {})])
def test_token_rules_see_one_row_per_sample(model, rule, options):
    """A rule on a packed batch decides on per-sample rows: ``scope: sequence`` and the PPL
    smoothing window stay inside each sample, so it trains the padded path's tokens."""
    from qtune.strategies.token_registry import build_token_rule

    packed, padded = batches(model, 7)
    strategy = build_strategy("full", seed=0)
    strategy.token_rule = build_token_rule(rule, seed=0, **options)
    got, g_got = step_and_grads(model, packed, strategy)
    want, g_want = step_and_grads(model, padded, strategy)
    assert_same_record(got, want, g_got, g_want)
    if rule == "ppl":
        assert 0 < float(got.tokens_trained) < float(got.scores["num_tokens"].sum())


def capture_plans(strategy):
    seen = []
    inner = strategy.batch_plan

    def batch_plan(stats):
        plan = inner(stats)
        seen.append((stats, plan))
        return plan

    strategy.batch_plan = batch_plan
    return seen


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"token_budget": "batch_code", "loss_denominator": "all_attended", "entropy_scope": "all"},
        {"batch_scoring": "reuse"},
    ],
)
def test_qtuning_on_a_packed_batch_equals_padded(model, seed, options):
    """Q-Tuning's BatchStats are the padded ones (per-sample rows), so its plan is too; it
    trains the same tokens (re-packed rows) with the same loss and gradients."""
    packed, padded = batches(model, seed, num=23)
    strategy = build_strategy("qtuning", seed=0, sample_ratio=0.5, token_ratio=0.6, **options)
    seen = capture_plans(strategy)
    got, g_got = step_and_grads(model, packed, strategy)
    want, g_want = step_and_grads(model, padded, strategy)
    (s_got, p_got), (s_want, p_want) = seen
    width = s_want.token_loss.shape[1]
    assert s_got.token_loss.shape[1] >= width
    for k in ("sample_loss", "sample_ppl", "sample_entropy"):
        torch.testing.assert_close(getattr(s_got, k), getattr(s_want, k), equal_nan=True, msg=k, **TOL)
    for k in ("response_mask", "attention_mask"):
        assert torch.equal(getattr(s_got, k)[:, :width], getattr(s_want, k)), k
        assert not getattr(s_got, k)[:, width:].any(), k
    resp = s_want.response_mask
    for k in ("token_loss", "token_entropy"):
        torch.testing.assert_close(getattr(s_got, k)[:, :width][resp], getattr(s_want, k)[resp], msg=k, **TOL)
    assert torch.equal(p_got.keep, p_want.keep) and 0 < int(p_want.keep.sum()) < 23
    assert torch.equal(p_got.token_mask[:, :width], p_want.token_mask)
    assert_same_record(got, want, g_got, g_want)
    assert torch.equal(got.trained_mask, want.trained_mask)
    assert torch.equal(got.token_keep[:, :width], want.token_keep)
    assert p_got.info.keys() == p_want.info.keys()
    if options.get("batch_scoring") != "reuse":  # only the kept samples were forwarded again
        kept_tokens = int(packed["sample_length"][got.trained_mask].sum())
        assert int(got.forward_tokens) == kept_tokens < int(got.scoring_tokens)
        assert int(want.forward_tokens) == kept_tokens


def test_repack_keeps_each_kept_sample_intact(model):
    packed, padded = batches(model, 11, num=25)
    keep = torch.arange(25) % 3 != 1
    sub, picked = repack(packed, keep)
    assert sorted(picked.tolist()) == keep.nonzero().flatten().tolist()
    assert torch.equal(sub["sample_id"], packed["sample_id"][picked])
    assert sub["input_ids"].shape[0] < packed["input_ids"].shape[0]  # fewer rows
    assert sub["input_ids"].shape[1] <= packed["input_ids"].shape[1]
    # every kept sample has its own tokens, labels and positions, in the sub-batch's layout
    want_ids = SegmentMap.tokens(packed).to_samples(packed["input_ids"])[picked]
    want_labels = SegmentMap.tokens(packed).to_samples(packed["labels"], fill=-100)[picked]
    got_ids = SegmentMap.tokens(sub).to_samples(sub["input_ids"], want_ids.shape[1])
    got_labels = SegmentMap.tokens(sub).to_samples(sub["labels"], want_ids.shape[1], fill=-100)
    assert torch.equal(got_ids, want_ids) and torch.equal(got_labels, want_labels)
    assert torch.equal(sub["sample_length"], packed["sample_length"][picked])
    # nothing kept: one sample still runs (every rank must backward)
    sub, picked = repack(packed, torch.zeros(25, dtype=torch.bool))
    assert picked.tolist() == [0] and sub["sample_id"].tolist() == [packed["sample_id"][0].item()]
