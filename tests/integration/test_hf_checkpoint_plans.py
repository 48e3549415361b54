"""The Hugging Face mixin's checkpoints hold the plans a resume needs, not every past epoch's
(they grew by one plan an epoch: 620 -> 963 MB over 10 epochs at 1e7 samples)."""

import torch
from tiny_hf import save_tiny_llama

from qtune.hf import STATE_FILE, PruningMixin

N, B, T, EPOCHS = 32, 4, 12, 4


def test_saved_plan_count_stays_flat_over_epochs(tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from qtune.kernels import set_default_backend

    set_default_backend("torch")

    class PrunedTrainer(PruningMixin, Trainer):
        pass

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (N, T), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    data = [
        {"input_ids": i, "attention_mask": torch.ones(T, dtype=torch.long), "labels": y} for i, y in zip(ids, labels)
    ]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(save_tiny_llama(tmp_path / "llama")))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=B,
        num_train_epochs=EPOCHS,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        save_strategy="epoch",
        dataloader_num_workers=0,
    )
    trainer = PrunedTrainer(
        model=model, args=args, train_dataset=data, pruning="random", pruning_options={"keep_ratio": 0.5}
    )
    trainer.train()
    folders = sorted((tmp_path / "out").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(folders) == EPOCHS
    saved = [sorted(torch.load(f / STATE_FILE, weights_only=True)["core"]["plans"]) for f in folders]
    assert saved == [[e] for e in range(EPOCHS)]  # the epoch just ended, whose loader a resume rebuilds
    assert sorted(trainer.pruning_plans) == list(range(EPOCHS))  # in memory a user still reads them all
