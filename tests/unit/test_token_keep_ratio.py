"""The step record's ``response_tokens`` (response tokens of the rows that trained) beside
``tokens_trained``, padded and packed, with and without a token rule and under Q-Tuning's batch
plan; the core books it per epoch and in its totals, and the summary's ``token_keep_ratio`` is
their quotient. Expected counts come from the items' labels, not from the step."""

from __future__ import annotations

import math

import pytest
import torch
from packed_reference import make_items, packed_and_padded

from qtune.pruning.batch_stats import lm_stats
from qtune.pruning.core import PruningCore
from qtune.pruning.train_step import StepRecord, train_step
from qtune.runs.summary import build_summary
from qtune.strategies import build_strategy
from qtune.strategies.token_registry import build_token_rule

NUM = 17


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tiny_hf import save_tiny_llama
    from transformers import LlamaForCausalLM

    path = save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")
    return LlamaForCausalLM.from_pretrained(str(path), attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def data(model):
    items = make_items(NUM, 3, vocab=model.config.vocab_size)
    packed, padded = packed_and_padded(items, cap=30, seed=3)
    by_id = {it["sample_id"]: int((it["labels"][1:] != -100).sum()) for it in items}
    n = torch.tensor([by_id[int(i)] for i in padded["sample_id"]])  # response tokens, batch order
    return {"packed": packed, "padded": padded}, n


def step(model, batch, strategy):
    with torch.no_grad():
        return train_step(lambda b, labels=None: lm_stats(model, b, labels, backend="torch"), batch, strategy, 0, 0)


def with_rule(rule, **options):
    strategy = build_strategy("full", seed=0)
    strategy.token_rule = build_token_rule(rule, seed=0, **options)
    return strategy


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_without_a_rule_every_response_token_trains(model, data, layout):
    batches, n = data
    record = step(model, batches[layout], None)
    assert int(record.response_tokens) == int(record.tokens_trained) == int(n.sum())


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_a_rule_at_half_trains_the_per_row_ceiling_sum(model, data, layout):
    batches, n = data
    record = step(model, batches[layout], with_rule("random", keep_ratio=0.5, scope="sequence"))
    assert int(record.response_tokens) == int(n.sum())
    assert int(record.tokens_trained) == sum(max(1, math.ceil(k / 2)) for k in n.tolist())


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_a_reweighting_rule_trains_every_response_token(model, data, layout):
    batches, n = data
    record = step(model, batches[layout], with_rule("dft"))
    assert int(record.response_tokens) == int(record.tokens_trained) == int(n.sum())


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_qtuning_counts_the_response_of_the_rows_it_kept(model, data, layout):
    batches, n = data
    strategy = build_strategy("qtuning", seed=0, sample_ratio=0.5, token_ratio=0.5)
    record = step(model, batches[layout], strategy)
    keep = record.trained_mask.cpu()
    assert 0 < int(keep.sum()) < NUM
    # trained_mask is in the padded batch's row order for both layouts (sample_id order)
    assert int(record.response_tokens) == int(n[keep].sum())
    assert int(record.tokens_trained) == int(record.token_keep.sum()) < int(n[keep].sum())


def test_the_core_books_it_and_the_summary_divides():
    core = PruningCore(build_strategy("full", seed=0), num_samples=4)
    core.plan_epoch(0, 1)
    ids = torch.arange(4)
    for trained, response in ((3, 8), (5, 8)):
        one = torch.tensor(1.0)
        record = StepRecord(one, ids, {}, one, torch.tensor(float(trained)), one)
        record.response_tokens = torch.tensor(float(response))
        core.record_batch(record)
    entry = core.finish_epoch(0, elapsed=1.0)
    assert (entry["tokens_trained"], entry["response_tokens"]) == (8.0, 16.0)
    assert core.totals["response_tokens"] == 16.0
    summary = summary_of(core.totals, core.history)
    assert (summary["response_tokens"], summary["token_keep_ratio"]) == (16, 0.5)
    assert summary_of({"tokens_trained": 3.0})["token_keep_ratio"] is None  # nothing measured


def summary_of(totals, history=()):
    return build_summary(
        strategy="full",
        seed=0,
        epochs=1,
        train_samples_total=4,
        totals=totals,
        num_params=1,
        wall_time_s=0.0,
        evaluation={},
        history=list(history),
    )
