"""A token rule's reference model (``qtune.pruning.reference``, ``qtune.models.reference_model``)
and the per-token loss file (``qtune.pruning.token_loss_file``, ``qtune.pruning.token_loss_writer``):
each checked against plain PyTorch (cross entropy on a model's logits, softmax entropy)."""

import copy
import json
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qtune.pruning.token_loss_writer import write_token_losses
from qtune.models.adapters import apply_adapter
from qtune.models.reference_model import load_reference_model
from qtune.pruning.batch_stats import lm_stats
from qtune.pruning.reference import path_reference, reference_token_loss, self_reference
from qtune.pruning.token_loss_file import TokenLossFile
from qtune.pruning.token_step import TokenStep
from qtune.strategies import build_token_rule

VOCAB = 24


def tiny_llama(seed=0, vocab=VOCAB):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg).train()


def batch_of(seed=1, b=3, t=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100  # prompt
    attn = torch.ones_like(ids)
    attn[0, -2:] = 0  # a padded row
    labels[0, -2:] = -100
    return {"sample_id": torch.arange(b), "input_ids": ids, "labels": labels, "attention_mask": attn}


def plain_nll(model, batch):
    """Per-token NLL [B, T-1] from the model's logits (0 where the label is ignored)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none")
    return torch.where(labels != -100, nll, torch.zeros_like(nll))


def lora(model):
    return apply_adapter({"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}, model)


def test_lora_self_reference_disables_the_adapters_and_holds_no_copy():
    base = tiny_llama()
    start = copy.deepcopy(base).eval()
    policy = lora(base)
    ref = self_reference(policy)
    assert ref.module is None and ref.info["copy"] is False
    assert ref.params == sum(p.numel() for p in start.parameters())  # the frozen base's weights
    batch = batch_of()
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # move the adapters away from their zero start
        loss = F.cross_entropy(
            policy(input_ids=batch["input_ids"]).logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = reference_token_loss(ref, policy, batch, backend="torch")
    torch.testing.assert_close(got, plain_nll(start, batch), rtol=1e-5, atol=1e-5)  # the base model
    assert not torch.allclose(got, plain_nll(policy.eval(), batch), atol=1e-3)  # not the adapted one
    policy.train()
    reference_token_loss(ref, policy, batch, backend="torch")
    assert policy.training  # its mode is given back, adapters enabled again
    assert not torch.allclose(plain_nll(policy, batch), plain_nll(start, batch), atol=1e-3)


def test_self_reference_without_adapters_is_a_frozen_copy_of_the_start():
    policy = tiny_llama()
    start = copy.deepcopy(policy).eval()
    ref = self_reference(policy)
    assert ref.module is not None and ref.info["copy"] is True
    assert not any(p.requires_grad for p in ref.module.parameters()) and not ref.module.training
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)
    batch = batch_of()
    torch.testing.assert_close(reference_token_loss(ref, policy, batch, backend="torch"), plain_nll(start, batch))


def test_a_path_reference_loads_from_a_run_directory(tmp_path):
    saved = tiny_llama(seed=3)
    run_dir = tmp_path / "run"
    saved.save_pretrained(str(run_dir / "final"))
    (run_dir / "summary.json").write_text(json.dumps({"flops_estimate": 123.0}))
    policy = tiny_llama(seed=4)
    module, info = load_reference_model(run_dir, policy)
    assert info["training_flops"] == 123.0 and info["dir"].endswith("final")
    ref = path_reference(module, str(run_dir), info)
    batch = batch_of()
    torch.testing.assert_close(
        reference_token_loss(ref, policy, batch, backend="torch"), plain_nll(saved.eval(), batch), rtol=1e-5, atol=1e-5
    )
    assert ref.describe()["training_flops"] == 123.0
    with pytest.raises(ValueError, match=r"reference\.path=.*tokenizer"):
        load_reference_model(run_dir, tiny_llama(vocab=VOCAB + 1))
    with pytest.raises(FileNotFoundError, match=r"reference\.path="):
        load_reference_model(tmp_path, policy)


def _columns(n=5, w=7, seed=0):
    g = np.random.default_rng(seed)
    ref = g.uniform(0, 8, size=(n, w)).astype(np.float32)
    ref[:, :2] = np.nan  # the prompt
    ref[0, 0] = 1e6  # beyond float16's range: stored as its largest value
    return {"ref_loss": ref, "base_loss": ref + 1.0}


def test_the_loss_file_round_trips_float16_memory_mapped(tmp_path):
    cols = _columns()
    lengths = np.full(5, 8)
    write_token_losses(tmp_path / "losses", cols, lengths, {"data_fingerprint": {"train_digest": "d"}, "flops": 9.0})
    f = TokenLossFile(tmp_path / "losses")
    assert isinstance(f.columns["ref_loss"], np.memmap) and f.columns["ref_loss"].dtype == np.float16
    want = np.clip(cols["ref_loss"], None, 65504.0).astype(np.float16).astype(np.float32)
    assert np.abs(want - cols["ref_loss"])[1:, 2:].max() > 0  # float16 rounds: the test can tell
    ids = torch.tensor([3, 0, 4])
    got = f.rows("ref_loss", ids, 9)  # wider than stored: NaN beyond
    np.testing.assert_array_equal(got[:, :7].numpy(), want[[3, 0, 4]])
    assert torch.isnan(got[:, 7:]).all() and got[1, 0] == 65504.0
    assert f.flops == 9.0 and f.num_samples == 5
    again = pickle.loads(pickle.dumps(f))  # a spawned rank reopens it, memory-mapped
    assert isinstance(again.columns["ref_loss"], np.memmap) and len(pickle.dumps(f)) < 1000


def test_a_loss_file_for_other_data_is_refused_naming_the_mismatch(tmp_path):
    cols = _columns()
    write_token_losses(tmp_path / "l", cols, np.full(5, 8), {"data_fingerprint": {"train_digest": "abc"}})
    f = TokenLossFile(tmp_path / "l")
    good = {"train_samples": 5, "train_digest": "abc"}
    f.check(good, [8] * 5)
    with pytest.raises(ValueError, match=r"reference\.path=.*6.*sample count"):
        f.check({**good, "train_samples": 6}, [8] * 6)
    with pytest.raises(ValueError, match=r"sample 2 has 8 tokens there and 9"):
        f.check(good, [8, 8, 9, 8, 8])
    with pytest.raises(ValueError, match=r"data digest abc there, xyz.*fingerprint"):
        f.check({**good, "train_digest": "xyz"}, [8] * 5)
    with pytest.raises(FileNotFoundError, match=r"reference\.path=.*qtune-score token_losses\.out"):
        TokenLossFile(tmp_path)
    write_token_losses(tmp_path / "r", {"ref_loss": cols["ref_loss"]}, np.full(5, 8), {})
    with pytest.raises(ValueError, match="token_losses.base=true"):
        TokenLossFile(tmp_path / "r").rows("base_loss", torch.tensor([0]), 3)


def _step(name, policy, ref=None, fused=False, **options):
    rule = build_token_rule(name, **options)
    ts = TokenStep(rule, reference=ref, num_params=1000, fused_head=fused, backend="torch")

    def stats_fn(batch):
        return lm_stats(policy, batch, fused_head=fused, backend="torch")

    return ts(policy, stats_fn, batch_of())


def test_eaft_reads_the_top_k_entropy_of_the_policy_logits_in_the_same_step():
    policy = tiny_llama()
    out = _step("eaft", policy, top_k=5)
    batch = batch_of()
    with torch.no_grad():
        z = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    q = z.topk(5, dim=-1).values.softmax(-1)
    h = -(q * q.log()).sum(-1)
    resp = batch["labels"][:, 1:] != -100
    torch.testing.assert_close(out.inputs.topk_entropy[resp], h[resp], rtol=1e-5, atol=1e-6)
    assert out.scoring_tokens is None  # no reference forward
    assert out.stats.loss.requires_grad


@pytest.mark.parametrize("fused", [False, True])
def test_asft_kl_and_rho1_reference_loss_through_the_token_step(fused):
    policy = tiny_llama(seed=5)
    start = tiny_llama(seed=6)
    ref = path_reference(start, "x")
    batch = batch_of()
    asft = _step("asft", policy, ref, fused)
    with torch.no_grad():
        zp = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    zr = start(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float().detach()
    kl = (zr.softmax(-1) * (zr.log_softmax(-1) - zp.log_softmax(-1))).sum(-1)  # KL(ref || policy)
    resp = batch["labels"][:, 1:] != -100
    torch.testing.assert_close(asft.inputs.kl[resp], kl[resp], rtol=1e-4, atol=1e-5)
    assert asft.inputs.kl.requires_grad  # the anchor trains the policy
    tokens = int(batch["attention_mask"].sum())
    assert float(asft.scoring_tokens) == pytest.approx(tokens * ref.params / 1000)  # 2·P_ref per token
    rho1 = _step("rho1", policy, ref, fused)
    torch.testing.assert_close(rho1.inputs.ref_loss, plain_nll(start, batch), rtol=1e-5, atol=1e-5)
    assert float(rho1.scoring_tokens) == pytest.approx(tokens * ref.params / 1000)


def test_reference_cost_is_counted_at_its_own_size():
    from qtune.runs.flops import flops_estimate, reference_scoring_tokens

    # a reference of half the trained model's size: 100 tokens cost 2·(P/2)·100 FLOPs
    scoring = reference_scoring_tokens(torch.tensor(100), 500, 1000)
    assert flops_estimate(1000, 0, float(scoring)) == pytest.approx(2 * 500 * 100)
    assert math.isclose(reference_scoring_tokens(10, 1000, 1000), 10)


def test_the_token_step_reads_a_loss_file_by_sample_id(tmp_path):
    batch = batch_of()
    batch["sample_id"] = torch.tensor([4, 0, 2])
    g = np.random.default_rng(1)
    ref = g.uniform(0, 4, size=(5, 10)).astype(np.float32)
    cols = {"ref_loss": ref, "base_loss": ref * 2}
    write_token_losses(tmp_path / "l", cols, np.full(5, 11), {})
    losses = TokenLossFile(tmp_path / "l")
    policy = tiny_llama()
    want = {k: torch.from_numpy(v.astype(np.float16).astype(np.float32)[[4, 0, 2], :8]) for k, v in cols.items()}

    def inputs(name, **options):
        rule = build_token_rule(name, **options)
        if rule.token_scores:
            rule.set_threshold(0.0)
        out = TokenStep(rule, losses=losses, num_params=1)(policy, lambda b: lm_stats(policy, b), batch)
        assert out.scoring_tokens is None  # the file's cost is counted once, not per step
        return out.inputs

    torch.testing.assert_close(inputs("rho1").ref_loss, want["ref_loss"])
    seq = inputs("tokencleaning", scope="sequence")
    torch.testing.assert_close((seq.base_loss, seq.ref_loss), (want["base_loss"], want["ref_loss"]))
    torch.testing.assert_close(inputs("tokencleaning").score, (want["base_loss"] - want["ref_loss"]).double())
