"""Token rules with a reference in ``qtune.hf.PruningMixin`` (``pruning_reference``): ``rho1``,
``tokencleaning`` (per sequence with a model reference, global with a loss file), ``eaft`` and
``asft``, alone and composed with ``random`` 0.5, in ``Trainer`` and TRL's ``SFTTrainer`` (LoRA,
``pruning_reference="self"``). The tokens trained are counted here from the recorded
micro-batches (and the loss file), the reference forwards' FLOPs from the parameter counts; one
module fixture trains each run once."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hf_trainers import B, N, RESPONSE, LMItems, keep_count, make_trainer, sft_trainer
from tiny_hf import save_tiny_llama

from qtune.hf import write_token_losses
from qtune.pruning.batch_stats import lm_stats

RANDOM = ("random", {"keep_ratio": 0.5})
FULL = ("full", {})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("hfref") / "llama")


@pytest.fixture(scope="module")
def ref_run(model_dir, tmp_path_factory):
    """A finished qtune run: ``final/`` holds the tiny Llama with other weights (what a model
    trained on a clean subset would be), ``summary.json`` what training it cost."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path_factory.mktemp("clean_run")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    model.save_pretrained(str(run / "final"))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(run / "final"))
    (run / "summary.json").write_text(json.dumps({"flops_estimate": 1234.0}))
    return run


def params(model) -> tuple[int, int]:
    ps = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)


class Runs:
    """Trainers by name, each built and trained once on first use."""

    def __init__(self, model_dir, ref_run, root):
        self.model_dir, self.ref_run, self.root, self.done = model_dir, ref_run, root, {}

    def losses(self, name="losses", sft=False):
        """Per-token losses of the training set: the reference run's and the starting model's."""
        out = self.root / name
        if name not in self.done:
            writer = (
                sft_trainer(self.model_dir, self.root / f"w{name}", None, lora=True)
                if sft
                else make_trainer(self.model_dir, self.root / f"w{name}")
            )
            self.done[name] = write_token_losses(writer, out, reference=str(self.ref_run), base=True)
        return out

    def __call__(self, name, samples, token, options=None, reference=None, sft=False, **mixin):
        if name not in self.done:
            pruning, sample_options = samples
            mixin = {"pruning_reference": reference, **mixin}
            if sft:
                trainer = sft_trainer(
                    self.model_dir, self.root / name, token, options, pruning, sample_options, lora=True, mixin=mixin
                )
            else:
                trainer = make_trainer(
                    self.model_dir, self.root / name, pruning, sample_options, token, options, mixin=mixin
                )
            trainer.counts = params(trainer.model)
            trainer.train()
            self.done[name] = trainer
        return self.done[name]


@pytest.fixture(scope="module")
def runs(model_dir, ref_run, tmp_path_factory):
    return Runs(model_dir, ref_run, tmp_path_factory.mktemp("runs"))


def per_batch(trainer, ratio):
    """Batch scope: ⌈ratio·(response tokens of the micro-batch)⌉ per recorded micro-batch."""
    return float(sum(keep_count(sum(rows), ratio) for *_, rows in trainer.trained))


def per_row(trainer, count):
    return float(sum(count(n) for *_, rows in trainer.trained for n in rows))


def grad_flops(trainer):
    p, pt = trainer.counts
    return (4 * p + 2 * pt) * trainer.pruning_totals["forward_tokens"]


def samples_trained(trainer, samples):
    return (2 if samples is FULL else 1) * N


@pytest.mark.parametrize("samples", [FULL, RANDOM], ids=["alone", "random"])
def test_rho1_trains_the_top_share_of_each_micro_batch_against_the_starting_model(runs, samples):
    t = runs(f"rho1_{samples[0]}", samples, "rho1", reference="self")
    assert t.pruning_totals["tokens_trained"] == per_batch(t, 0.6)
    assert t.pruning_totals["samples_trained"] == samples_trained(t, samples)
    # a frozen copy of the starting model (no adapters): one forward of P per trained token
    p, _ = t.counts
    totals = t.pruning_totals
    assert totals["scoring_tokens"] == totals["forward_tokens"] > 0
    assert t.pruning_flops == pytest.approx(grad_flops(t) + 2 * p * totals["forward_tokens"])
    reference = t._token_step.reference.module
    start = type(t.model).from_pretrained(str(runs.model_dir))
    for (name, ref), (_, p0), (_, trained) in zip(
        reference.named_parameters(), start.named_parameters(), t.model.named_parameters()
    ):
        assert torch.equal(ref, p0) and not ref.requires_grad, name  # the start, untouched
    assert any(not torch.equal(a, b) for a, b in zip(reference.parameters(), t.model.parameters()))


@pytest.mark.parametrize("samples", [FULL, RANDOM], ids=["alone", "random"])
def test_tokencleaning_per_sequence_forwards_the_base_and_a_run_directory(runs, samples):
    t = runs(f"tc_seq_{samples[0]}", samples, "tokencleaning", {"scope": "sequence"}, str(runs.ref_run))
    assert t.pruning_totals["tokens_trained"] == per_row(t, lambda n: keep_count(n, 0.6))
    assert t.pruning_totals["samples_trained"] == samples_trained(t, samples)
    totals, (p, _) = t.pruning_totals, t.counts
    assert totals["scoring_tokens"] == 2 * totals["forward_tokens"]  # the base and the reference
    assert t.pruning_flops == pytest.approx(grad_flops(t) + 2 * 2 * p * totals["forward_tokens"])
    summary = t._token_step.summary()
    assert summary["dir"].endswith("final") and summary["training_flops"] == 1234.0
    assert summary["base"]["source"] == "self"


def file_scores(path):
    return np.load(path / "base_loss.npy").astype(np.float32) - np.load(path / "ref_loss.npy").astype(np.float32)


def global_kept(path, ratio=0.6):
    """Per sample, the response tokens whose base − reference score reaches the data set's
    ⌈ratio·n⌉-th largest; and that threshold."""
    scores = file_scores(path)
    finite = np.sort(scores[np.isfinite(scores)])[::-1]
    threshold = finite[keep_count(finite.size, ratio) - 1]
    return np.where(np.isfinite(scores), scores >= threshold, False).sum(-1), float(threshold)


def test_the_loss_file_holds_each_models_per_token_loss(runs, model_dir):
    from transformers import AutoModelForCausalLM

    path = runs.losses()
    meta = runs.done["losses"]
    data = LMItems()
    ids = torch.stack([data[i]["input_ids"] for i in range(N)])
    labels = torch.stack([data[i]["labels"] for i in range(N)])[:, 1:]
    for column, source in (("ref_loss", runs.ref_run / "final"), ("base_loss", model_dir)):
        model = AutoModelForCausalLM.from_pretrained(str(source)).eval()
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        stored = torch.from_numpy(np.load(path / f"{column}.npy").astype(np.float32))
        resp = labels != -100
        torch.testing.assert_close(stored[resp], ce[resp], rtol=2e-3, atol=2e-3)  # float16
        assert torch.isnan(stored[~resp]).all()
    p = sum(x.numel() for x in model.parameters())
    assert meta["tokens_forwarded"] == N * 12
    assert meta["flops"] == pytest.approx(2 * 2 * p * N * 12)  # the reference and the base


@pytest.mark.parametrize("samples", [FULL, RANDOM], ids=["alone", "random"])
def test_tokencleaning_global_keeps_the_file_scores_above_the_data_set_threshold(runs, samples):
    path = runs.losses()
    t = runs(f"tc_global_{samples[0]}", samples, "tokencleaning", None, str(path))
    kept, threshold = global_kept(path)
    assert t.pruning_token_rule.threshold == pytest.approx(threshold)
    assert 0.55 <= kept.sum() / (N * RESPONSE) <= 0.65
    trained = [i for *_, ids, _ in t.trained for i in ids]
    assert t.pruning_totals["tokens_trained"] == float(kept[trained].sum())
    assert t.pruning_totals["samples_trained"] == samples_trained(t, samples)
    assert t.pruning_totals["scoring_tokens"] == 0  # no forward but the policy's
    assert t.pruning_flops == pytest.approx(grad_flops(t) + runs.done["losses"]["flops"])


@pytest.mark.parametrize("samples", [FULL, RANDOM], ids=["alone", "random"])
@pytest.mark.parametrize("token", ["eaft", "asft"])
def test_reweighting_rules_train_every_response_token_of_the_trained_samples(runs, samples, token):
    t = runs(f"{token}_{samples[0]}", samples, token, reference="self" if token == "asft" else None)
    totals = t.pruning_totals
    assert totals["tokens_trained"] == per_row(t, lambda n: n) == totals["samples_trained"] * RESPONSE
    assert totals["samples_trained"] == samples_trained(t, samples)
    reference_tokens = totals["forward_tokens"] if token == "asft" else 0  # the reference's logits
    assert totals["scoring_tokens"] == reference_tokens
    assert t.pruning_flops == pytest.approx(grad_flops(t) + 2 * t.counts[0] * reference_tokens)


def test_a_budget_spends_the_reference_forwards_and_the_loss_file(runs):
    for name, token, options, reference in (
        ("budget_self", "rho1", None, "self"),
        ("budget_file", "tokencleaning", None, str(runs.losses())),
    ):
        t = runs(name, RANDOM, token, options, reference, pruning_budget=0.5)
        budget = t.pruning_budget
        assert budget.spent == pytest.approx(t.pruning_flops)  # the ledger is the run's FLOPs
        step = budget.last_step
        assert 0.5 * budget.full_run_flops - step <= budget.spent <= 0.5 * budget.full_run_flops
    assert runs.done["budget_self"].pruning_totals["scoring_tokens"] > 0
    with pytest.raises(ValueError, match="reference's loss file"):
        make_trainer(
            runs.model_dir,
            runs.root / "tiny",
            *RANDOM,
            "tokencleaning",
            mixin={"pruning_reference": str(runs.losses()), "pruning_budget": 0.02},
        )


def test_sft_trainer_lora_reference_is_the_policy_with_its_adapters_disabled(runs):
    t = runs("sft_rho1", RANDOM, "rho1", reference="self", sft=True)
    step = t._token_step
    p, pt = t.counts
    assert step.reference.module is None and step.reference.params == p - pt  # no copy: the frozen base
    assert t.pruning_totals["tokens_trained"] == per_batch(t, 0.6)
    assert t.pruning_totals["samples_trained"] == N
    forward = t.pruning_totals["forward_tokens"]
    assert t.pruning_totals["scoring_tokens"] == pytest.approx(forward * (p - pt) / p)
    assert t.pruning_flops == pytest.approx(grad_flops(t) + 2 * (p - pt) * forward)
    # the reference's losses on a batch: the base model's (adapters off), not the trained policy's
    data = t._remove_unused_columns(t.train_dataset, "training")
    batch = t.data_collator([data[i] for i in range(8)])  # padded rows of several lengths
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "sample_id")}
    model = t.model.train()
    out = step(model, lambda b: lm_stats(model, b), batch)
    labels = batch["labels"][:, 1:]
    resp = labels != -100

    def ce(m):
        with torch.no_grad():
            logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")

    model.eval()
    with model.disable_adapter():
        base = ce(model)
    policy = ce(model)
    torch.testing.assert_close(out.inputs.ref_loss[resp], base[resp], rtol=1e-5, atol=1e-6)
    assert (policy[resp] - base[resp]).abs().max() > 1e-3  # trained adapters: the test can tell


def test_sft_trainer_runs_asft_eaft_and_a_global_loss_file(runs):
    path = runs.losses("sft_losses", sft=True)
    asft = runs("sft_asft", FULL, "asft", reference="self", sft=True)
    eaft = runs("sft_eaft", RANDOM, "eaft", sft=True)
    tc = runs("sft_tc", RANDOM, "tokencleaning", None, str(path), sft=True)
    lengths = {n for *_, rows in tc.trained for n in rows}
    assert len(lengths) > 1  # rows of several response lengths
    for t in (asft, eaft):
        assert t.pruning_totals["tokens_trained"] == per_row(t, lambda n: n)
    p, pt = asft.counts
    assert asft.pruning_totals["scoring_tokens"] == pytest.approx(asft.pruning_totals["forward_tokens"] * (p - pt) / p)
    assert eaft.pruning_totals["scoring_tokens"] == 0
    kept, _ = global_kept(path)
    trained = [i for *_, ids, _ in tc.trained for i in ids]
    assert tc.pruning_totals["tokens_trained"] == float(kept[trained].sum())
    assert tc.pruning_totals["samples_trained"] == N
    # the base is the LoRA model's frozen base: its forward costs the base's parameters
    assert runs.done["sft_losses"]["params"]["base_loss"] == p - pt


@pytest.mark.parametrize(
    "token, options, reference, error, message",
    [
        (
            "rho1",
            None,
            None,
            ValueError,
            r"pruning_token='rho1' needs a reference model \(argument pruning_reference\)",
        ),
        ("asft", None, "FILE", ValueError, "a loss file does not hold"),
        ("tokencleaning", None, "self", ValueError, r"pruning_token_options\['scope'\]=global ranks every token"),
        ("tokencleaning", {"scope": "sequence"}, "self", ValueError, "would score 0 everywhere"),
        ("rho1", None, {"source": "file"}, ValueError, r"pruning_reference=\{'source': 'file'\} needs a 'path'"),
        ("rho1", None, {"kind": "self"}, ValueError, r"pruning_reference: unknown key\(s\) \['kind'\]"),
        ("rho1", None, "nowhere", FileNotFoundError, r"pruning_reference=nowhere: no such directory"),
        ("rho1", None, "EMPTY", FileNotFoundError, r"pruning_reference=.*neither a Hugging Face model directory"),
        ("rho1", None, 3, TypeError, r"pruning_reference=3: expected 'self', a directory"),
    ],
)
def test_a_missing_or_unusable_reference_is_refused_naming_the_argument(
    runs, tmp_path, token, options, reference, error, message
):
    (tmp_path / "empty").mkdir()
    if reference in ("FILE", "EMPTY"):
        reference = str(runs.losses()) if reference == "FILE" else str(tmp_path / "empty")
    with pytest.raises(error, match=message):
        make_trainer(runs.model_dir, tmp_path, "full", None, token, options, mixin={"pruning_reference": reference})


def test_a_loss_file_for_other_data_or_left_padded_rows_is_refused(runs, tmp_path):
    path = str(runs.losses())

    class Other(LMItems):  # the same lengths, other tokens
        def __init__(self):
            super().__init__(seed=1)

    with pytest.raises(ValueError, match=r"pruning_reference=.*data digest.*fingerprint"):
        make_trainer(
            runs.model_dir, tmp_path, "full", None, "tokencleaning", data=Other(), mixin={"pruning_reference": path}
        )
    t = make_trainer(runs.model_dir, tmp_path, "full", None, "tokencleaning", mixin={"pruning_reference": path})
    data = t.train_dataset
    batch = {k: torch.stack([torch.as_tensor(data[i][k]) for i in range(B)]) for k in ("input_ids", "labels")}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["attention_mask"][0, :2] = 0  # a left-padded row
    batch["sample_id"] = torch.arange(B)
    with pytest.raises(ValueError, match="pruning_reference: .*left-padded"):
        t.compute_loss(t.model.train(), batch)


def test_a_reference_no_rule_reads_is_not_loaded_with_a_warning(runs, tmp_path):
    with pytest.warns(UserWarning, match="pruning_token='eaft' reads no reference: it is not loaded"):
        t = make_trainer(runs.model_dir, tmp_path, "full", None, "eaft", mixin={"pruning_reference": "self"})
    assert t._token_step.reference is None
    module = type(t.model).from_pretrained(str(runs.ref_run / "final"))
    t = make_trainer(runs.model_dir, tmp_path, "full", None, "rho1", mixin={"pruning_reference": module})
    assert t._token_step.reference.module is module and not any(p.requires_grad for p in module.parameters())
    assert math.isclose(t._token_step.reference.params, params(module)[0])


def test_a_resumed_run_compares_with_the_starting_model_and_ends_with_the_same_weights(runs, tmp_path):
    """The ``self`` copy is taken when the trainer is built, before a checkpoint's weights are
    loaded: a run resumed mid-epoch ends where the uninterrupted one does."""
    whole = runs("rho1_random", RANDOM, "rho1", reference="self")
    mixin = {"pruning_reference": "self"}
    make_trainer(runs.model_dir, tmp_path, *RANDOM, "rho1", mixin=mixin, save_strategy="steps", save_steps=3).train()
    resumed = make_trainer(runs.model_dir, tmp_path, *RANDOM, "rho1", mixin=mixin)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))  # inside the first epoch
    for (name, a), (_, b) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    assert resumed.pruning_totals["tokens_trained"] == whole.pruning_totals["tokens_trained"]
    assert resumed.pruning_totals["scoring_tokens"] == whole.pruning_totals["scoring_tokens"]
    # the checkpoint records the reference: resuming against another one is refused
    other = make_trainer(runs.model_dir, tmp_path, *RANDOM, "rho1", mixin={"pruning_reference": str(runs.ref_run)})
    with pytest.raises(ValueError, match=r"reference\.source: 'self' -> 'path'"):
        other.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
