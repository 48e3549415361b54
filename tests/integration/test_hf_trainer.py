"""qtune's strategies inside ``transformers.Trainer`` through ``qtune.hf.PruningMixin``, with a
tiny random Llama (no download)."""

import pytest
import torch
from tiny_hf import save_tiny_llama

from qtune.hf import PruningMixin

N, B, T = 32, 4, 12


class CountingDataset(torch.utils.data.Dataset):
    """Fixed-length LM items (first 4 tokens are the prompt); every read is counted."""

    def __init__(self, n=N, vocab=40, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, vocab, (n, T), generator=g)
        self.reads: list[int] = []

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        self.reads.append(int(i))
        labels = self.ids[i].clone()
        labels[:4] = -100
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(T, dtype=torch.long), "labels": labels}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("hf") / "llama")


def make_trainer(model_dir, out, pruning, options=None, epochs=2, data=None, pruning_budget=None, **args):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from qtune.kernels import set_default_backend

    set_default_backend("torch")  # the plain PyTorch statistics: no kernel build in a test

    class PrunedTrainer(PruningMixin, Trainer):
        pass

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    targs = TrainingArguments(
        **{
            "output_dir": str(out),
            "per_device_train_batch_size": B,
            "num_train_epochs": epochs,
            "learning_rate": 1e-2,
            "lr_scheduler_type": "cosine",
            "report_to": [],
            "use_cpu": True,
            "seed": 0,
            "disable_tqdm": True,
            "logging_steps": 1,
            "save_strategy": "no",
            "dataloader_num_workers": 0,
            **args,
        }
    )
    return PrunedTrainer(
        model=model,
        args=targs,
        train_dataset=data if data is not None else CountingDataset(),
        pruning=pruning,
        pruning_options=options or {},
        pruning_budget=pruning_budget,
    )


def train_recording_lr(trainer) -> list[float]:
    """Train; the learning rate after each optimiser step."""
    from transformers import TrainerCallback

    lrs = []

    class LR(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            lrs.append(trainer.lr_scheduler.get_last_lr()[0])

    trainer.add_callback(LR())
    trainer.train()
    return lrs


def test_random_half_visits_half_the_samples_each_epoch_and_the_lr_ends_on_schedule(model_dir, tmp_path):
    data = CountingDataset()
    trainer = make_trainer(model_dir, tmp_path, "random", {"keep_ratio": 0.5}, data=data)
    data.reads.clear()  # the mixin looked at item 0 to see whether it carries a sample_id
    lrs = train_recording_lr(trainer)
    per_epoch = N // 2
    assert len(data.reads) == 2 * per_epoch  # the dataset served only the planned samples
    for e in range(2):
        reads = data.reads[e * per_epoch : (e + 1) * per_epoch]
        assert len(set(reads)) == per_epoch
        assert sorted(reads) == sorted(trainer.pruning_plans[e].sample_ids.tolist())
    assert trainer.state.global_step == 2 * per_epoch // B  # 8 optimiser steps, not 16
    assert len(lrs) == 8 and lrs[-1] == pytest.approx(0.0, abs=1e-12)  # cosine end at the last step
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # and decays on the way there
    assert lrs[3] == pytest.approx(1e-2 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.5)).item()))


def test_infobatch_weights_reach_the_loss(model_dir, tmp_path):
    trainer = make_trainer(model_dir, tmp_path, "infobatch", {"prune_ratio": 0.5}, epochs=3)
    trainer.train()
    plan = trainer.pruning_plans[1]
    assert plan.weights is not None and (plan.weights > 1).any()
    trainer.plan_epoch(1)  # the weights of epoch 1 are in force
    boosted = plan.sample_ids[plan.weights > 1][:2].tolist()
    plain = plan.sample_ids[plan.weights == 1][:2].tolist()
    ids = boosted + plain
    data = trainer.train_dataset
    batch = {k: torch.stack([data[i][k] for i in ids]) for k in ("input_ids", "attention_mask", "labels")}
    batch["sample_id"] = torch.tensor(ids)
    model = trainer.model.train()
    loss = trainer.compute_loss(model, dict(batch))
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    w = torch.tensor([float(plan.weights[plan.sample_ids == i]) for i in ids])
    expected = (ce * w[:, None]).sum() / (labels != -100).sum()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_qtuning_trains_a_quarter_of_each_batch(model_dir, tmp_path):
    trainer = make_trainer(
        model_dir,
        tmp_path,
        "qtuning",
        {"sample_ratio": 0.25, "token_ratio": 0.5},
        epochs=1,
        per_device_train_batch_size=8,
    )
    trainer.train()
    entry = trainer.pruning_history[0]
    assert entry["batches"] == N // 8
    assert entry["samples_trained"] == N // 4  # two of every eight
    assert entry["tokens_trained"] < (N // 4) * (T - 4)  # and half-ish of their tokens


@pytest.fixture(scope="module")
def uninterrupted(model_dir, tmp_path_factory):
    whole = make_trainer(model_dir, tmp_path_factory.mktemp("whole"), "infobatch", {"prune_ratio": 0.5}, epochs=3)
    whole.train()
    return whole


# InfoBatch here trains 8, 6 and 8 steps: step 5 is inside epoch 0, step 14 the last step of
# the pruned epoch 1 (saved before the epoch is booked), step 15 the first of epoch 2, where
# Trainer's equal-epoch arithmetic (15 // 8, 15 % 8) would resume at epoch 1, batch 7
@pytest.mark.parametrize("save_steps, step", [(5, 5), (7, 14), (5, 15)])
def test_resume_from_a_trainer_checkpoint_ends_with_the_same_weights(
    model_dir, tmp_path, uninterrupted, save_steps, step
):
    whole, opts = uninterrupted, {"prune_ratio": 0.5}
    assert [h["batches"] for h in whole.pruning_history] == [8, 6, 8]
    make_trainer(model_dir, tmp_path, "infobatch", opts, epochs=3, save_strategy="steps", save_steps=save_steps).train()
    resumed = make_trainer(model_dir, tmp_path, "infobatch", opts, epochs=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{step}"))
    for (name, a), (_, b) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    assert resumed.state.global_step == whole.state.global_step == 22
    assert [h["batches"] for h in resumed.pruning_history] == [8, 6, 8]
    assert torch.equal(resumed._pruning_store.loss, whole._pruning_store.loss)


def test_resume_mid_epoch_with_another_batch_size_is_refused(model_dir, tmp_path):
    opts = {"prune_ratio": 0.5}
    make_trainer(model_dir, tmp_path, "infobatch", opts, epochs=1, save_strategy="steps", save_steps=5).train()
    other = make_trainer(model_dir, tmp_path, "infobatch", opts, epochs=1, per_device_train_batch_size=2 * B)
    with pytest.raises(
        ValueError,
        match=f"batch size {B}; this run uses {2 * B} "
        r"\(per_device_train_batch_size\)",
    ):
        other.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_pruning_state_is_refused_naming_the_file(model_dir, tmp_path, damage):
    from qtune.hf import STATE_FILE

    opts = {"prune_ratio": 0.5}
    make_trainer(model_dir, tmp_path, "infobatch", opts, epochs=1, save_strategy="steps", save_steps=5).train()
    state = tmp_path / "checkpoint-5" / STATE_FILE
    data = bytearray(state.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # same size, still a zip: only the CRCs tell. A byte inside the largest entry's data
        import struct
        import zipfile

        with zipfile.ZipFile(state) as archive:
            entry = max(archive.infolist(), key=lambda i: i.file_size)
        name_len, extra_len = struct.unpack("<HH", data[entry.header_offset + 26 : entry.header_offset + 30])
        start = entry.header_offset + 30 + name_len + extra_len  # after the local file header
        data[start + entry.file_size // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    again = make_trainer(model_dir, tmp_path, "infobatch", opts, epochs=1)
    with pytest.raises(ValueError, match=f"resume_from_checkpoint={state}: .*pruning state"):
        again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))


def test_resume_mid_epoch_with_another_accumulation_is_refused(model_dir, tmp_path):
    opts = {"prune_ratio": 0.5}
    make_trainer(model_dir, tmp_path, "infobatch", opts, epochs=1, save_strategy="steps", save_steps=5).train()
    other = make_trainer(model_dir, tmp_path, "infobatch", opts, epochs=1, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="gradient_accumulation_steps=1; this trainer has 2"):
        other.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))


def test_resume_under_a_budget_ends_where_the_uninterrupted_run_ends(model_dir, tmp_path):
    opts = {"keep_ratio": 0.25}
    whole = make_trainer(model_dir, tmp_path / "whole", "random", opts, pruning_budget=0.5)
    whole.train()
    make_trainer(
        model_dir, tmp_path / "cut", "random", opts, pruning_budget=0.5, save_strategy="steps", save_steps=3
    ).train()
    checkpoint = str(tmp_path / "cut" / "checkpoint-3")  # inside epoch 1
    with pytest.raises(ValueError, match="pruning_budget=0.5; this trainer has pruning_budget=None"):
        make_trainer(model_dir, tmp_path / "cut", "random", opts).train(resume_from_checkpoint=checkpoint)
    resumed = make_trainer(model_dir, tmp_path / "cut", "random", opts, pruning_budget=0.5)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == whole.state.global_step == 8
    assert resumed.pruning_budget.spent == pytest.approx(whole.pruning_budget.spent)
    for (name, a), (_, b) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name


def test_strategy_by_name_is_checked(model_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        make_trainer(model_dir, tmp_path, "random", {"keep": 0.5})


def test_a_peft_model_trains_only_its_adapters(model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    trainer = make_trainer(model_dir, tmp_path, "random", {"keep_ratio": 0.5}, epochs=1)
    trainer.model = get_peft_model(trainer.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert trainer.pruning_history[0]["samples_trained"] == N // 2


def test_el2n_scores_every_sample_before_it_prunes(model_dir, tmp_path):
    trainer = make_trainer(model_dir, tmp_path, "el2n", {"keep_ratio": 0.5}, epochs=3)
    trainer.train()
    sizes = [h["planned_samples"] for h in trainer.pruning_history]
    assert sizes[0] == N and sizes[-1] == N // 2
    assert any(h.get("scoring_tokens") for h in trainer.pruning_history)


def test_trl_sft_trainer_prunes_the_same_way(model_dir, tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtune.kernels import set_default_backend

    set_default_backend("torch")

    class PrunedSFT(PruningMixin, trl.SFTTrainer):
        pass

    words = ["one two", "three four", "five six", "seven eight"]
    rows = [{"prompt": f"add {words[i % 4]}", "completion": f" {words[(i + 1) % 4]}"} for i in range(N)]
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.pad_token = tok.eos_token
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        save_strategy="no",
        max_length=32,
    )
    trainer = PrunedSFT(
        model=AutoModelForCausalLM.from_pretrained(str(model_dir)),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
        pruning="qtuning",
        pruning_options={"sample_ratio": 0.25, "token_ratio": 0.5},
    )
    trainer.train()
    assert [h["samples_trained"] for h in trainer.pruning_history] == [N // 4, N // 4]
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_budget_half_of_a_three_epoch_run_spends_half_and_ends_the_lr_at_the_last_step(model_dir, tmp_path):
    from qtune.models.adapters import parameter_counts
    from qtune.runs.flops import token_costs

    data = CountingDataset()
    trainer = make_trainer(model_dir, tmp_path, "random", {"keep_ratio": 0.5}, epochs=3, data=data, pruning_budget=0.5)
    data.reads.clear()
    lrs = train_recording_lr(trainer)
    budget = trainer.pruning_budget
    grad_cost = token_costs(*parameter_counts(trainer.model))[0]
    assert budget.full_run_flops == pytest.approx(3 * grad_cost * N * T)
    # every token read was trained with gradients: an independent count of what was spent
    assert budget.spent == pytest.approx(grad_cost * len(data.reads) * T)
    step = grad_cost * B * T
    assert 0.5 * budget.full_run_flops - step <= budget.spent <= 0.5 * budget.full_run_flops
    assert trainer.state.global_step == len(lrs) == 12  # 3 epochs of 16 samples, 4 per step
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and all(a > b for a, b in zip(lrs, lrs[1:]))


def test_budget_buys_more_epochs_for_a_smaller_selection(model_dir, tmp_path):
    """A quarter of the samples under half the FLOPs of 2 full epochs: 4 epochs, past
    num_train_epochs, and the strategy plans them knowing it."""
    seen = []
    from qtune.strategies import build_strategy

    strategy = build_strategy("random", seed=0, keep_ratio=0.25)
    plan = strategy.epoch_plan
    strategy.epoch_plan = lambda ctx: seen.append(ctx.max_epochs) or plan(ctx)
    trainer = make_trainer(model_dir, tmp_path, strategy, epochs=2, pruning_budget=0.5)
    trainer.train()
    assert [e["epoch"] for e in trainer.pruning_history] == [0, 1, 2, 3]
    assert trainer.state.global_step == 4 * (N // 4) // B
    assert seen[0] == 1 and seen[1:] == [4, 4, 4]  # 2 x 0.5 before any cost is known, then 4
    assert trainer.pruning_budget.progress == pytest.approx(1.0)


def test_budget_and_max_steps_together_are_refused(model_dir, tmp_path):
    with pytest.raises(ValueError, match="pruning_budget=0.5 and max_steps=3"):
        make_trainer(model_dir, tmp_path, "random", {"keep_ratio": 0.5}, pruning_budget=0.5, max_steps=3)


@pytest.mark.parametrize("max_steps", [5, 11])
def test_max_steps_runs_that_many_steps_over_pruned_epochs_and_ends_the_lr_there(model_dir, tmp_path, max_steps):
    """Pruned epochs of 4 steps (16 of 32 samples, batch 4): Trainer's full-epoch arithmetic
    stopped at 4 of 5 steps, or ran 12 steps for 11; the schedule now spans max_steps."""
    trainer = make_trainer(model_dir, tmp_path, "random", {"keep_ratio": 0.5}, max_steps=max_steps)
    lrs = train_recording_lr(trainer)
    assert trainer.state.global_step == len(lrs) == max_steps
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert sum(h["batches"] for h in trainer.pruning_history) == max_steps
    assert [h["epoch"] for h in trainer.pruning_history] == list(range(-(-max_steps // 4)))


@pytest.mark.parametrize(
    "case, message",
    [
        ("iterable", "an IterableDataset has none"),
        ("empty", "empty train_dataset"),
        ("no_labels", "carry no 'labels'"),
        ("fractional", r"num_train_epochs=1.5: PruningMixin plans whole epochs"),
        ("group_by_length", "train_sampling_strategy='group_by_length'"),
        ("split_batches", r"accelerator_config.split_batches=True"),
    ],
)
def test_what_the_mixin_cannot_honour_is_refused_when_the_trainer_is_built(model_dir, tmp_path, case, message):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(CountingDataset())

    class NoLabels(CountingDataset):
        def __getitem__(self, i):
            return {k: v for k, v in super().__getitem__(i).items() if k != "labels"}

    data = {"iterable": Stream(), "empty": CountingDataset(n=0), "no_labels": NoLabels()}.get(case)
    args = {
        "fractional": {"epochs": 1.5},
        "group_by_length": {"train_sampling_strategy": "group_by_length"},
        "split_batches": {"accelerator_config": {"split_batches": True}},
    }
    with pytest.raises((ValueError, TypeError), match=message):
        make_trainer(model_dir, tmp_path, "random", {"keep_ratio": 0.5}, data=data, **args.get(case, {}))
