"""Per-sample statistics of packed batches equal the padded path's; token maps round-trip."""

from __future__ import annotations

import pytest
import torch
from packed_reference import make_items, packed_and_padded, place_like_packed

from qtune.kernels import TokenStats
from qtune.pruning.batch_stats import lm_stats, sample_scores
from qtune.pruning.segments import SegmentMap

FIELDS = ("loss", "entropy", "el2n", "p_label", "margin", "accuracy", "num_tokens")


def assert_same_scores(got: dict, want: dict, tol: float = 1e-5) -> None:
    assert set(got) == set(want) == set(FIELDS)
    assert torch.equal(got["num_tokens"], want["num_tokens"])
    for k in FIELDS[:-1]:
        torch.testing.assert_close(got[k], want[k], rtol=tol, atol=tol, equal_nan=True, msg=k)


def synthetic_stats(shape, valid: torch.Tensor, g: torch.Generator) -> TokenStats:
    values = [torch.rand(shape, generator=g) * 5 for _ in range(5)]
    correct = (torch.rand(shape, generator=g) > 0.5).float()
    return TokenStats(*values[:4], correct, values[4], valid)


@pytest.mark.parametrize("seed", range(6))
def test_segment_reduction_equals_padded_means(seed):
    """Pure reduction: the same per-token values, laid out padded or packed, give the same
    per-sample means. Positions outside samples hold noise, so reading one would show."""
    packed, padded = packed_and_padded(make_items(31, seed), cap=30, seed=seed)
    g = torch.Generator().manual_seed(seed)
    pad_valid = padded["labels"][:, 1:] != -100
    pad = synthetic_stats(pad_valid.shape, pad_valid, g)
    pk_valid = packed["labels"][:, 1:] != -100
    noise = synthetic_stats(pk_valid.shape, pk_valid, g)
    pk = TokenStats(*(place_like_packed(p, packed, n) for p, n in zip(pad[:-1], noise[:-1])), pk_valid)
    segments = SegmentMap.labels(packed)
    # the packed targets are exactly the padded ones, none crossing a boundary
    assert torch.equal(segments.to_samples(pk_valid, pad_valid.shape[1]), pad_valid)
    assert int(pk_valid.sum()) == int(pad_valid.sum())
    assert_same_scores(segments.scores(pk, pk_valid), sample_scores(pad, pad_valid))
    # a sub-mask (e.g. one strategy's tokens) reduces the same way
    sub = pad_valid & (torch.rand(pad_valid.shape, generator=g) > 0.4)
    assert_same_scores(segments.scores(pk, segments.to_packed(sub, fill=False)), sample_scores(pad, sub))


def test_empty_samples_give_nan_like_the_padded_path():
    packed, padded = packed_and_padded(make_items(9, 3), cap=20)
    segments = SegmentMap.labels(packed)
    none = torch.zeros_like(packed["labels"][:, 1:], dtype=torch.bool)
    stats = synthetic_stats(none.shape, none, torch.Generator().manual_seed(0))
    got = segments.scores(stats, none)
    assert got["loss"].isnan().all() and got["num_tokens"].eq(0).all()


@pytest.mark.parametrize("seed", range(4))
def test_token_maps_round_trip(seed):
    packed, padded = packed_and_padded(make_items(27, seed), cap=26, seed=seed)
    g = torch.Generator().manual_seed(seed)
    labels = SegmentMap.labels(packed)
    width = padded["input_ids"].shape[1] - 1
    in_sample = torch.arange(width) < (packed["sample_length"] - 1).unsqueeze(1)  # [S, Lmax - 1]
    # samples -> packed -> samples, in label coordinates (a batch plan's token mask)
    y = torch.rand(in_sample.shape, generator=g)
    back = labels.to_samples(labels.to_packed(y, fill=-1.0), width, fill=-1.0)
    assert torch.equal(back, torch.where(in_sample, y, -1.0))
    keep = torch.rand(in_sample.shape, generator=g) > 0.5
    mask = labels.to_packed(keep, fill=False)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, place_like_packed(keep, packed, torch.zeros_like(mask)))
    # packed -> samples -> packed keeps every position that belongs to a sample
    x = torch.rand(labels.seg.shape, generator=g)
    there = labels.seg >= 0
    assert torch.equal(labels.to_packed(labels.to_samples(x)), torch.where(there, x, 0.0))
    # token coordinates: the padded input ids come back from the packed ones
    tokens = SegmentMap.tokens(packed)
    ids = tokens.to_samples(packed["input_ids"], padded["input_ids"].shape[1])
    assert torch.equal(ids, padded["input_ids"])
    assert torch.equal(tokens.to_packed(padded["input_ids"], fill=0), packed["input_ids"])
    # a per-sample value at each of its positions (a batch plan's keep, a weight)
    flags = torch.arange(labels.num_samples) % 3 == 0
    spread = labels.per_position(flags, fill=False)
    assert torch.equal(spread, there & flags[labels.seg.clamp(min=0)])


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tiny_hf import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.mark.parametrize(
    "attn,fused", [("sdpa", False), ("eager", False), ("sdpa", True), ("sdpa_segments", False), ("sdpa_segments", True)]
)
def test_packed_forward_gives_the_padded_statistics(tiny_llama, attn, fused):
    """End to end through a random Llama: the packed batch (position_ids, no mask) gives every
    sample the statistics of the padded batch, so attention never crosses a sample."""
    from transformers import LlamaForCausalLM

    from qtune.models.hf import checked_attn_implementation

    model = LlamaForCausalLM.from_pretrained(str(tiny_llama), attn_implementation=checked_attn_implementation(attn))
    model.eval()
    assert model.config.use_cache  # the default that would hide the packing from the mask
    vocab = model.config.vocab_size
    packed, padded = packed_and_padded(make_items(13, 1, vocab=vocab, max_prompt=3), cap=32)
    assert (packed["seg"] >= 0).sum(-1).gt(packed["sample_length"].max()).any()  # rows do hold several
    segments = SegmentMap.labels(packed)
    with torch.no_grad():
        want = lm_stats(model, padded, fused_head=fused, backend="torch")
        got = lm_stats(model, packed, fused_head=fused, backend="torch")
        assert int(got.valid.sum()) == int(want.valid.sum())  # no target across a boundary
        assert_same_scores(segments.scores(got, got.valid), sample_scores(want, want.valid))
        # a collator's mask of ones would turn transformers' packed detection off: not passed
        with_mask = dict(packed, attention_mask=torch.ones_like(packed["seg"]))
        masked = lm_stats(model, with_mask, fused_head=fused, backend="torch")
        torch.testing.assert_close(masked.loss, got.loss, rtol=0, atol=0)
        # the check can fail: positions that run on across samples let attention cross them
        crossing = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["seg"]))
        leaked = lm_stats(model, crossing, backend="reference")
        diff = (segments.scores(leaked, got.valid)["loss"] - sample_scores(want, want.valid)["loss"]).abs()
        assert diff.nan_to_num(0).max() > 1e-3


@pytest.mark.parametrize("budget", ["per_sample", "batch_code"])
def test_batch_plan_per_sample_then_back_to_packed(budget):
    """Q-Tuning's batch plan works on [S, T] views of a packed batch and gives the padded
    batch's plan; its keep and token mask scatter back into packed coordinates."""
    from qtune.pruning.batch_stats import next_token_labels
    from qtune.strategies import BatchStats, build_strategy

    packed, padded = packed_and_padded(make_items(24, 5), cap=28, seed=5)
    g = torch.Generator().manual_seed(5)
    pad_valid = padded["labels"][:, 1:] != -100
    pad = synthetic_stats(pad_valid.shape, pad_valid, g)
    pk_valid = packed["labels"][:, 1:] != -100
    noise = synthetic_stats(pk_valid.shape, pk_valid, g)
    pk = TokenStats(*(place_like_packed(p, packed, n) for p, n in zip(pad[:-1], noise[:-1])), pk_valid)
    segments, width = SegmentMap.labels(packed), pad_valid.shape[1]

    def batch_stats(scores, loss, entropy, response, attended):
        return BatchStats(padded["sample_id"], scores["loss"], scores["loss"].exp(), scores["entropy"],
                          loss, entropy, response, attended)  # fmt: skip

    want_stats = batch_stats(sample_scores(pad, pad_valid), pad.loss, pad.entropy, pad_valid,
                             padded["attention_mask"][:, 1:].bool())  # fmt: skip
    attended = segments.to_samples(next_token_labels(packed) != -100, width, fill=False)
    got_stats = batch_stats(
        segments.scores(pk, pk_valid),
        segments.to_samples(pk.loss, width),
        segments.to_samples(pk.entropy, width),
        segments.to_samples(pk_valid, width, fill=False),
        attended,
    )
    strategy = build_strategy("qtuning", sample_ratio=0.5, token_ratio=0.6, token_budget=budget)
    want, got = strategy.batch_plan(want_stats), strategy.batch_plan(got_stats)
    assert torch.equal(got.keep, want.keep) and 0 < int(want.keep.sum()) < 24
    assert torch.equal(got.token_mask, want.token_mask)
    trained = segments.to_packed(got.token_mask.bool(), fill=False) & segments.per_position(got.keep, fill=False)
    expected = want.token_mask.bool() & want.keep.unsqueeze(1)
    assert torch.equal(trained, place_like_packed(expected, packed, torch.zeros_like(trained)))


def test_weighted_loss_of_a_packed_batch_equals_the_padded_one():
    from qtune.pruning.loss import masked_token_mean

    packed, padded = packed_and_padded(make_items(20, 8), cap=25, seed=8)
    g = torch.Generator().manual_seed(8)
    pad_valid = padded["labels"][:, 1:] != -100
    pad_loss = torch.rand(pad_valid.shape, generator=g)
    segments = SegmentMap.labels(packed)
    pk_loss = segments.to_packed(pad_loss)
    pk_valid = packed["labels"][:, 1:] != -100
    weights = torch.rand(20, generator=g) * 2
    want = masked_token_mean(pad_loss, pad_valid, weights)
    got = masked_token_mean(pk_loss, pk_valid, segments.per_position(weights))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
