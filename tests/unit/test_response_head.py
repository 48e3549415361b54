"""The response-only LM head gives the full head's statistics and gradients, on N rows only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from packed_reference import packed_and_padded

from qtune.data.sft import build_example, collate_sft
from qtune.pruning.batch_stats import lm_stats, next_token_labels
from qtune.pruning.response_head import head_split, labelled_stats, probe_split

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model():
    from qtune.models.tiny_llama import build_tiny_llama

    torch.manual_seed(0)
    # untied head and a bias-free Linear, as Llama; small so that the test stays fast
    m = build_tiny_llama(
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "tie_word_embeddings": False},
        vocab_size=61,
    )
    return m.double().float().train()  # fp32


def prompt_heavy_items(num: int, seed: int, vocab: int = 61) -> list[dict]:
    """Long prompts (12 to 30 tokens), short responses (1 to 4): most positions have no label."""
    g = np.random.default_rng(seed)
    items = []
    for i in range(num):
        prompt = g.integers(3, vocab, size=int(g.integers(12, 31))).tolist()
        response = g.integers(3, vocab, size=int(g.integers(1, 5))).tolist()
        ids, labels = build_example(prompt, response)
        items.append({"sample_id": i, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels)})
    return items


def batches(seed: int) -> dict[str, dict]:
    items = prompt_heavy_items(7, seed)
    packed, padded = packed_and_padded(items, cap=72, seed=seed)
    assert packed["input_ids"].shape[0] < len(items)  # rows hold several samples
    return {"padded": padded, "packed": packed}


def stats_and_grads(model, batch, labels, fused, response_only):
    model.zero_grad(set_to_none=True)
    stats = lm_stats(model, batch, labels, fused_head=fused, backend="torch", response_only_head=response_only)
    # per-token weights, as a plan's weights would: the gradient must follow each token
    w = torch.linspace(0.5, 1.5, stats.loss.numel()).view_as(stats.loss)
    (stats.loss * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return stats, grads


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("scope", ["response", "all"])
def test_response_only_head_equals_the_full_head(model, fused, layout, scope):
    """Every statistic at every position, and every parameter's gradient, equal the full head's
    (plain logits path with fused=False: the reference); the labels are the response ones or,
    for entropy_scope "all", every attended position (next_token_labels)."""
    for seed in range(2):
        batch = batches(seed)[layout]
        labels = next_token_labels(batch) if scope == "all" else None
        want, want_g = stats_and_grads(model, batch, labels, fused=False, response_only=False)
        got, got_g = stats_and_grads(model, batch, labels, fused=fused, response_only=True)
        assert 0 < int(got.valid.sum()) < got.valid.numel() / (2 if scope == "response" else 1)
        for name, a, b in zip(want._fields, got, want):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            torch.testing.assert_close(a, b, **TOL, msg=name)
        assert torch.equal(got.valid, want.valid)
        assert not got.entropy[~got.valid].any() and not got.loss[~got.valid].any()
        assert set(got_g) == set(want_g) and len(want_g) == len(list(model.parameters()))
        for name in want_g:
            torch.testing.assert_close(got_g[name], want_g[name], **TOL, msg=name)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_head_sees_only_the_labelled_rows(model, layout, monkeypatch):
    """Counted: the head's input holds exactly one row per labelled position (the full head
    sees every position); the fused head's matmuls (F.linear with the head's weight) likewise."""
    batch = batches(3)[layout]
    head = model.get_output_embeddings()
    seen = []
    hook = head.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[:-1].numel()))
    try:
        for labels in (None, next_token_labels(batch)):
            n = int(((batch["labels"][:, 1:] if labels is None else labels) != -100).sum())
            seen.clear()
            lm_stats(model, batch, labels, backend="torch")
            assert seen == [n]
            seen.clear()
            lm_stats(model, batch, labels, backend="torch", response_only_head=False)
            assert seen == [batch["input_ids"].numel()] and n < seen[0]
    finally:
        hook.remove()
    rows = []
    linear = torch.nn.functional.linear

    def counting(x, w, b=None):
        if w is head.weight:
            rows.append(x.shape[0])
        return linear(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", counting)
    lm_stats(model, batch, fused_head=True, backend="torch")
    assert sum(rows) == int((batch["labels"][:, 1:] != -100).sum())


def test_nothing_labelled_still_gives_zero_gradients(model):
    """A batch with no label: zero loss, and every parameter's gradient is zeros, not None
    (DDP needs them), as with the full head."""
    batch = batches(0)["padded"]
    batch = dict(batch, labels=torch.full_like(batch["labels"], -100))
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        stats = lm_stats(model, batch, fused_head=fused, backend="torch")
        assert not stats.valid.any() and not stats.loss.any()
        stats.loss.sum().backward()
        assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


class SoftCapped(torch.nn.Module):
    """A model whose logits are its head's output soft-capped, as Gemma 2 does."""

    def __init__(self, inner, cap=30.0):
        super().__init__()
        self.inner, self.cap = inner, cap

    def get_decoder(self):
        return self.inner.get_decoder()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = torch.tanh(out.logits / self.cap) * self.cap
        return out


class NormAfterDecoder(SoftCapped):
    def forward(self, **kwargs):
        hidden = self.get_decoder()(**kwargs).last_hidden_state
        from transformers.modeling_outputs import CausalLMOutput

        return CausalLMOutput(logits=self.get_output_embeddings()(torch.nn.functional.layer_norm(hidden, (32,))))


def test_models_whose_logits_are_not_the_head_fall_back(model):
    """The probe refuses a transform of the head's output and a norm before it, and accepts the
    plain Llama; a refused model gets the full head's numbers (with one warning)."""
    assert probe_split(model)[0] == (model.get_decoder(), model.get_output_embeddings())
    assert head_split(model) is not None
    batch = batches(1)["padded"]
    for cls, why in ((SoftCapped, "transforms the head's output"), (NormAfterDecoder, "not the decoder's last")):
        wrapped = cls(model)
        split, reason = probe_split(wrapped)
        assert split is None and why in reason
        with pytest.warns(RuntimeWarning, match="response-only LM head off"):
            got = lm_stats(wrapped, batch, backend="torch")
        with torch.no_grad():
            logits = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        want = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none", ignore_index=-100
        )
        torch.testing.assert_close(got.loss.detach(), want, **TOL)
    assert probe_split(torch.nn.Linear(3, 3))[0] is None  # no get_decoder


def test_labelled_stats_checks_shapes(model):
    with pytest.raises(ValueError, match="does not match labels"):
        labelled_stats(torch.zeros(2, 5, 32), torch.zeros(2, 5, dtype=torch.long), model.get_output_embeddings())


def test_padded_collate_batch(model):
    """An ordinary padded SFT batch (collate_sft), no grad, as a scoring pass runs it."""
    batch = collate_sft(prompt_heavy_items(5, 9))
    with torch.no_grad():
        got = lm_stats(model, batch, backend="torch")
        want = lm_stats(model, batch, backend="torch", response_only_head=False)
    for name, a, b in zip(want._fields, got, want):
        torch.testing.assert_close(a, b, **TOL, msg=name)


@pytest.mark.parametrize("scope", ["response", "all"])
@pytest.mark.parametrize("scoring", ["separate", "reuse"])
def test_qtuning_step_scores_only_what_its_entropy_scope_reads(model, scope, scoring):
    """A Q-Tuning batch step: its scoring forward applies the head to the response rows (or to
    every attended row for entropy_scope "all"), and the step (loss, gradients, kept rows and
    tokens, scores) equals the full head's."""
    from qtune.pruning.train_step import train_step
    from qtune.strategies import build_strategy

    batch = dict(batches(4)["padded"])
    head = model.get_output_embeddings()
    n_resp = int((batch["labels"][:, 1:] != -100).sum())
    n_all = int((next_token_labels(batch) != -100).sum())
    model.eval()  # no dropout: the two runs must see the same model
    records, grads = [], []
    for response_only in (True, False):
        strategy = build_strategy(
            "qtuning",
            sample_ratio=0.5,
            token_ratio=0.5,
            entropy_scope=scope,
            batch_scoring=scoring,
            loss_denominator="all_attended",
        )
        seen = []
        hook = head.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[:-1].numel()))
        try:
            model.zero_grad(set_to_none=True)

            def stats_fn(b, labels=None):
                return lm_stats(model, b, labels, backend="torch", response_only_head=response_only)

            rec = train_step(stats_fn, batch, strategy, 0, 0)
            rec.loss.backward()
        finally:
            hook.remove()
        records.append(rec)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if response_only:
            assert seen[0] == (n_all if scope == "all" else n_resp)  # the scoring forward
            if scoring == "separate":  # then the kept rows' forward: their response only
                kept = rec.trained_mask.nonzero().flatten()
                assert seen[1:] == [int((batch["labels"][kept, 1:] != -100).sum())]
    model.train()
    got, want = records
    torch.testing.assert_close(got.loss, want.loss, **TOL)
    assert torch.equal(got.trained_mask, want.trained_mask) and torch.equal(got.token_keep, want.token_keep)
    assert 0 < int(got.trained_mask.sum()) < got.trained_mask.numel()
    for k in want.scores:
        torch.testing.assert_close(got.scores[k], want.scores[k], **TOL, equal_nan=True, msg=k)
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], **TOL, msg=name)


def test_probe_draws_no_random_numbers_and_keeps_modes():
    """The probe runs once per model at its first statistics call, which a resumed run reaches
    at another step: it must leave the random stream and every module's mode as they were."""
    from qtune.models.tiny_llama import build_tiny_llama

    m = build_tiny_llama({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}, vocab_size=61)
    m.model.layers[0].self_attn.attention_dropout = 0.5  # draws random numbers in training mode
    m.train()
    m.model.layers[0].mlp.eval()  # a mixed state must come back as it was
    modes = [x.training for x in m.modules()]
    state = torch.get_rng_state()
    assert head_split(m) is not None
    assert torch.equal(torch.get_rng_state(), state)
    assert [x.training for x in m.modules()] == modes


def test_lora_on_the_head_is_called_not_bypassed():
    """peft LoRA on lm_head: the head is no plain Linear, so even the fused head calls it on the
    labelled rows (its weight alone would drop the adapter) and matches the full head."""
    from peft import LoraConfig, get_peft_model

    from qtune.models.tiny_llama import build_tiny_llama

    torch.manual_seed(1)
    base = build_tiny_llama(
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "tie_word_embeddings": False},
        vocab_size=61,
    )
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], lora_dropout=0.0))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # a non-zero adapter, so that dropping it would show
    assert head_split(peft_model) is not None
    batch = batches(2)["padded"]
    want, want_g = stats_and_grads(peft_model, batch, None, fused=False, response_only=False)
    for fused in (False, True):
        got, got_g = stats_and_grads(peft_model, batch, None, fused=fused, response_only=True)
        torch.testing.assert_close(got.loss, want.loss, **TOL)
        assert set(got_g) == set(want_g) and any("lm_head" in n for n in want_g)
        for name in want_g:
            torch.testing.assert_close(got_g[name], want_g[name], **TOL, msg=name)


def test_a_forward_wrapped_in_autocast_keeps_its_cast(model):
    """accelerate (HF Trainer with bf16) wraps the model's forward in autocast: calling the
    decoder directly would run it uncast, so the statistics must be those of the wrapped forward."""
    import copy

    from accelerate.utils import convert_outputs_to_fp32

    wrapped = copy.deepcopy(model).eval()
    forward = wrapped.forward
    wrapped._original_forward = forward
    wrapped.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=torch.bfloat16)(forward))
    batch = batches(1)["padded"]
    with torch.no_grad():
        got = lm_stats(wrapped, batch, backend="torch")
        logits = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        uncast = lm_stats(model.eval(), batch, backend="torch")
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    torch.testing.assert_close(got.loss[mask], ce[mask], **TOL)
    assert not torch.allclose(uncast.loss[mask], ce[mask], **TOL)  # the cast matters on this batch
    model.train()
