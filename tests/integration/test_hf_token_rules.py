"""Token rules in ``qtune.hf.PruningMixin`` (``pruning_token``), alone and composed with a sample
strategy, in ``Trainer`` and TRL's ``SFTTrainer``: the tokens trained against an independent
count, the loss against plain PyTorch formulas, resume, and the refusals shared with qtune-train."""

import pytest
import torch
from hf_trainers import B, N, RESPONSE, expected_tokens, keep_count, make_trainer, sft_trainer
from tiny_hf import save_tiny_llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("hftok") / "llama")


SAMPLES = {"full": ("full", {}), "random_half": ("random", {"keep_ratio": 0.5})}


@pytest.mark.parametrize("samples", list(SAMPLES))
@pytest.mark.parametrize("token, options", [("random", {"keep_ratio": 0.3}), ("ppl", {"keep_ratio": 0.5, "lam": 0.5})])
def test_selecting_rules_train_the_configured_share_of_each_trained_sample(
    model_dir, tmp_path, samples, token, options
):
    pruning, sample_options = SAMPLES[samples]
    trainer = make_trainer(model_dir, tmp_path, pruning, sample_options, token, options)
    trainer.train()
    ratio = options["keep_ratio"]
    for entry in trainer.pruning_history:  # per epoch, against the trained rows' own counts
        rows = [r for r in trainer.trained if r[0] == entry["epoch"]]
        assert entry["samples_trained"] == sum(len(ids) for _, _, ids, _ in rows)
        assert entry["tokens_trained"] == expected_tokens(rows, ratio)
    response = expected_tokens(trainer.trained)
    assert response == trainer.pruning_totals["samples_trained"] * RESPONSE
    measured = trainer.pruning_totals["tokens_trained"] / response
    assert ratio <= measured < ratio + 1 / RESPONSE  # ⌈r·n⌉ of n per row
    assert trainer.pruning_totals["samples_trained"] == (2 * N if pruning == "full" else N)
    assert trainer.pruning_token_rule.name == token


@pytest.mark.parametrize("samples", list(SAMPLES))
def test_dft_trains_every_response_token_of_the_trained_samples(model_dir, tmp_path, samples):
    pruning, sample_options = SAMPLES[samples]
    trainer = make_trainer(model_dir, tmp_path, pruning, sample_options, "dft")
    trainer.train()
    assert trainer.pruning_totals["tokens_trained"] == expected_tokens(trainer.trained)  # reweighted = trained
    assert trainer.pruning_totals["samples_trained"] == (2 * N if pruning == "full" else N)


def fixed_batch(trainer, ids=(0, 1, 2, 3)):
    data = trainer.train_dataset
    batch = {k: torch.stack([data[i][k] for i in ids]) for k in ("input_ids", "attention_mask", "labels")}
    batch["sample_id"] = torch.tensor(ids)
    return batch


def token_ce(model, batch):
    """Per-token cross-entropy [B, T-1] and the response mask, in plain PyTorch."""
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return ce, labels != -100


def test_dft_loss_and_gradient_on_a_fixed_batch_match_the_formula(model_dir, tmp_path):
    """L = Σ sg(p)·CE over response tokens / their count (arXiv 2508.05629, Eq. 9)."""
    trainer = make_trainer(model_dir, tmp_path, token="dft")
    model, batch = trainer.model.train(), fixed_batch(trainer)
    loss = trainer.compute_loss(model, dict(batch))
    (got,) = torch.autograd.grad(loss, model.lm_head.weight)
    ce, mask = token_ce(model, batch)
    p = torch.exp(-ce).detach()
    expected = (p * ce)[mask].sum() / mask.sum()
    (want,) = torch.autograd.grad(expected, model.lm_head.weight)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) != pytest.approx(float(ce[mask].mean()), rel=1e-2)  # not the plain mean
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_ppl_without_neighbours_trains_the_lowest_loss_tokens_of_each_row(model_dir, tmp_path):
    trainer = make_trainer(model_dir, tmp_path, token="ppl", token_options={"keep_ratio": 0.5, "lam": 0.0})
    model, batch = trainer.model.train(), fixed_batch(trainer)
    loss = trainer.compute_loss(model, dict(batch))
    ce, mask = token_ce(model, batch)
    kept = keep_count(RESPONSE, 0.5)
    lowest = torch.where(mask, ce, torch.inf).sort(-1).values[:, :kept]  # per row, the kept tokens
    assert float(loss) == pytest.approx(float(lowest.sum() / (kept * B)), rel=1e-5)


def masks_drawn(trainer):
    """Wrap the rule: each application's (epoch, step, ids) -> its token weights."""
    rule, drawn = trainer.pruning_token_rule, {}
    apply = rule.apply

    def recorded(inputs):
        decided = apply(inputs)
        drawn[(inputs.epoch, inputs.step, tuple(inputs.sample_ids.tolist()))] = decided.weights.clone()
        return decided

    rule.apply = recorded
    return drawn


def test_a_resumed_run_draws_the_same_token_masks_and_ends_with_the_same_weights(model_dir, tmp_path):
    sample, tokens = ("random", {"keep_ratio": 0.5}), ("random", {"keep_ratio": 0.5})
    whole = make_trainer(model_dir, tmp_path / "whole", *sample, *tokens)
    whole_masks = masks_drawn(whole)
    whole.train()
    make_trainer(model_dir, tmp_path / "cut", *sample, *tokens, save_strategy="steps", save_steps=5).train()
    checkpoint = str(tmp_path / "cut" / "checkpoint-5")  # inside epoch 1 (4 steps an epoch)
    other = make_trainer(model_dir, tmp_path / "cut", *sample, "ppl", {"keep_ratio": 0.5})
    with pytest.raises(ValueError, match=r"strategy.token.name: 'random' -> 'ppl'"):
        other.train(resume_from_checkpoint=checkpoint)
    resumed = make_trainer(model_dir, tmp_path / "cut", *sample, *tokens)
    resumed_masks = masks_drawn(resumed)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert len(resumed_masks) == 3 and len(whole_masks) == 8  # steps 5..7 of 0..7
    for key, mask in resumed_masks.items():
        assert torch.equal(mask, whole_masks[key]), key
    for (name, a), (_, b) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    assert resumed.pruning_totals["tokens_trained"] == whole.pruning_totals["tokens_trained"]


def test_the_rule_is_in_the_saved_state(model_dir, tmp_path):
    trainer = make_trainer(model_dir, tmp_path, "random", {"keep_ratio": 0.5}, "ppl", {"keep_ratio": 0.25})
    config = trainer.pruning_state_dict()["core"]["config"]["strategy"]
    assert config == {"keep_ratio": 0.5, "token": {"name": "ppl", "keep_ratio": 0.25, "lam": 0.5, "scope": "sequence"}}


def test_a_built_rule_is_taken_as_it_is(model_dir, tmp_path):
    from qtune.strategies.token_registry import build_token_rule

    rule = build_token_rule("random", seed=7, keep_ratio=0.25)
    trainer = make_trainer(model_dir, tmp_path, token=rule, epochs=1)
    trainer.train()
    assert trainer.pruning_token_rule is rule
    assert trainer.pruning_totals["tokens_trained"] == N * keep_count(RESPONSE, 0.25)


@pytest.mark.parametrize(
    "pruning, token, options, message",
    [
        ("qtuning", "dft", None, r"pruning_token='dft': strategy 'qtuning' plans tokens itself"),
        ("full", "rho1", None, r"pruning_token='rho1' needs a reference model \(argument pruning_reference\)"),
        ("full", "asft", None, r"pruning_token='asft' needs a reference model \(argument pruning_reference\)"),
        ("full", "tokencleaning", {"scope": "sequence"}, r"pruning_token='tokencleaning' needs a reference model"),
        ("full", "nope", None, r"unknown token rule 'nope' \(config key pruning_token\)"),
        ("full", "ppl", {"bogus": 1}, r"unknown option\(s\) \['bogus'\] \(config keys pruning_token_options"),
        ("full", "ppl", {"keep_ratio": 1.5}, r"pruning_token_options\['keep_ratio'\]=1.5 is out of range"),
        ("full", None, {"keep_ratio": 0.5}, r"pruning_token_options given without pruning_token"),
    ],
)
def test_what_cannot_compose_is_refused_naming_the_argument(model_dir, tmp_path, pruning, token, options, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(
            model_dir, tmp_path, pruning, {"sample_ratio": 0.5} if pruning == "qtuning" else {}, token, options
        )


@pytest.mark.parametrize(
    "token, options, samples, lora",
    [("ppl", {"keep_ratio": 0.5}, "random_half", True), ("random", {"keep_ratio": 0.5}, "full", False)],
)
def test_sft_trainer_composes_a_selecting_rule(model_dir, tmp_path, token, options, samples, lora):
    pruning, sample_options = SAMPLES[samples]
    trainer = sft_trainer(model_dir, tmp_path, token, options, pruning, sample_options, lora=lora)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    lengths = {n for *_, rows in trainer.trained for n in rows}
    assert len(lengths) > 1  # rows of several response lengths: ⌈r·n⌉ differs from r·n
    assert trainer.pruning_totals["tokens_trained"] == expected_tokens(trainer.trained, options["keep_ratio"])
    measured = trainer.pruning_totals["tokens_trained"] / expected_tokens(trainer.trained)
    assert options["keep_ratio"] <= measured <= options["keep_ratio"] + 0.25
    assert trainer.pruning_totals["samples_trained"] == (N if pruning == "random" else 2 * N)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and (not lora or all("lora_" in n for n in changed))


def test_sft_trainer_dft_trains_every_response_token_on_the_formula(model_dir, tmp_path):
    trainer = sft_trainer(model_dir, tmp_path, "dft")
    trainer.train()
    assert trainer.pruning_totals["tokens_trained"] == expected_tokens(trainer.trained)
    batch = next(iter(trainer.get_train_dataloader()))  # padded rows of several lengths
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels", "sample_id")}
    model = trainer.model.train()
    loss = trainer.compute_loss(model, dict(batch)).detach()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    mask = labels != -100
    assert float(loss) == pytest.approx(float((torch.exp(-ce) * ce)[mask].sum() / mask.sum()), rel=1e-5)
