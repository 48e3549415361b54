"""``attn_implementation="sdpa_segments"``: per-sample sdpa on packed rows gives sdpa's numbers
with the block-diagonal mask (outputs and gradients), one attention call per segment."""

from __future__ import annotations

import pytest
import torch
from packed_reference import make_items, packed_and_padded

from qtune.models.hf import checked_attn_implementation
from qtune.models.segment_attention import NAME, segment_bounds


def test_segment_bounds_hand_worked():
    # row 0: samples of 3 and 2 tokens, then 2 padding slots (positions restart: a segment)
    # row 1: one sample of 4 tokens, then 3 padding slots; row 2: one sample filling the row
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 3, 4, 5, 6]])
    assert segment_bounds(position_ids) == [[(0, 3), (3, 5), (5, 7)], [(0, 4), (4, 7)], [(0, 7)]]
    # a restart that is not at 0 (a truncated continuation) still starts a segment
    assert segment_bounds(torch.tensor([4, 5, 0, 1, 9])) == [[(0, 2), (2, 4), (4, 5)]]


def small_llama(kv_heads: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                         use_cache=False)  # fmt: skip
    return LlamaForCausalLM(config)


def forward_and_grads(model, impl: str, batch: dict, upstream: torch.Tensor):
    model.set_attn_implementation(impl)
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                   attention_mask=batch.get("attention_mask"), use_cache=False).logits  # fmt: skip
    (logits * upstream).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kv_heads,seed", [(4, 0), (2, 1), (1, 2)])
def test_packed_rows_match_sdpa_with_the_block_mask(kv_heads, seed, monkeypatch):
    checked_attn_implementation(NAME)
    model = small_llama(kv_heads, seed)
    packed, padded = packed_and_padded(make_items(11, seed, vocab=40), cap=30, seed=seed)
    upstream = torch.randn(*packed["input_ids"].shape, 40, generator=torch.Generator().manual_seed(seed))
    want_out, want_grads = forward_and_grads(model, "sdpa", packed, upstream)

    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(query, *args, **kwargs):
        calls.append(query.shape[2])
        return real_sdpa(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    got_out, got_grads = forward_and_grads(model, NAME, packed, upstream)
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-5)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    # one causal call per segment and layer, each over its own tokens only: O(sum len^2)
    bounds = segment_bounds(packed["position_ids"])
    lengths = sorted(e - s for row in bounds for s, e in row)
    assert len(lengths) > packed["input_ids"].shape[0]  # rows do hold several samples
    assert sorted(calls) == sorted(lengths * model.config.num_hidden_layers)

    # a padded batch (attention mask) is transformers' sdpa unchanged: one call per layer
    calls.clear()
    up = torch.randn(*padded["input_ids"].shape, 40, generator=torch.Generator().manual_seed(seed))
    got_pad, _ = forward_and_grads(model, NAME, padded, up)
    assert calls == [padded["input_ids"].shape[1]] * model.config.num_hidden_layers
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", real_sdpa)
    want_pad, _ = forward_and_grads(model, "sdpa", padded, up)
    torch.testing.assert_close(got_pad, want_pad, rtol=0, atol=0)


def test_positions_running_on_make_one_segment():
    """The check can fail: without restarts the row is one causal segment, and the samples'
    outputs differ from the block-diagonal ones."""
    checked_attn_implementation(NAME)
    model = small_llama(4).eval()
    packed, _ = packed_and_padded(make_items(9, 3, vocab=40), cap=30)
    run_on = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["seg"]))
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        block = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
        model.set_attn_implementation(NAME)
        crossing = model(input_ids=run_on["input_ids"], position_ids=run_on["position_ids"]).logits
    assert (crossing - block).abs().max() > 1e-3


def test_refusals_name_the_setting():
    from qtune.models.segment_attention import sdpa_segments_forward

    q = torch.randn(1, 2, 5, 4)

    class Windowed(torch.nn.Module):
        sliding_window = 4

    with pytest.raises(ValueError, match="sliding window"):
        sdpa_segments_forward(Windowed(), q, q, q, None, position_ids=torch.arange(5)[None])
    with pytest.raises(ValueError, match="does not pass position_ids"):
        sdpa_segments_forward(torch.nn.Module(), q, q, q, None)
    with pytest.raises(ValueError, match="model.attn_implementation='sdpa_segment'"):
        checked_attn_implementation("sdpa_segment")
