"""Trainers with ``qtune.hf.PruningMixin`` on a tiny Llama for the HF integration tests: a
``Trainer`` on fixed-length items and a TRL ``SFTTrainer`` on prompt/completion rows, each
recording the trained micro-batches (ids and response tokens per row, counted from the labels)."""

from __future__ import annotations

import math

import pytest
import torch

from qtune.hf import PruningMixin

N, B, T, PROMPT = 32, 4, 12, 4
RESPONSE = T - PROMPT  # label tokens per row (labels shift by one; the prompt's are -100)


class LMItems(torch.utils.data.Dataset):
    def __init__(self, n=N, vocab=40, seed=0):
        self.ids = torch.randint(5, vocab, (n, T), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[:PROMPT] = -100
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(T, dtype=torch.long), "labels": labels}


def recording(base):
    """``PruningMixin`` over ``base``, recording each trained batch's ids and response-token
    counts per row (``trainer.trained``), counted here from the labels."""

    class Recorded(PruningMixin, base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and "sample_id" in inputs:
                rows = (inputs["labels"][:, 1:] != -100).sum(-1).tolist()
                self.trained.append((self._epoch, self.state.global_step, inputs["sample_id"].tolist(), rows))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return Recorded


def make_trainer(
    model_dir,
    out,
    pruning="full",
    options=None,
    token=None,
    token_options=None,
    epochs=2,
    mixin=None,
    data=None,
    **args,
):
    """A recorded ``Trainer`` on ``data`` (default :class:`LMItems`); ``mixin``: more mixin
    arguments (``pruning_reference``, ``pruning_budget``); ``args``: ``TrainingArguments``."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from qtune.kernels import set_default_backend

    set_default_backend("torch")
    torch.manual_seed(0)
    targs = TrainingArguments(
        **{
            "output_dir": str(out),
            "per_device_train_batch_size": B,
            "num_train_epochs": epochs,
            "learning_rate": 1e-2,
            "report_to": [],
            "use_cpu": True,
            "seed": 0,
            "disable_tqdm": True,
            "save_strategy": "no",
            "dataloader_num_workers": 0,
            **args,
        }
    )
    trainer = recording(Trainer)(
        model=AutoModelForCausalLM.from_pretrained(str(model_dir)),
        args=targs,
        train_dataset=LMItems() if data is None else data,
        pruning=pruning,
        pruning_options=options or {},
        pruning_token=token,
        pruning_token_options=token_options,
        **(mixin or {}),
    )
    trainer.trained = []
    return trainer


def keep_count(n: int, ratio: float) -> int:
    return 0 if n == 0 else min(n, max(1, math.ceil(ratio * n)))


def expected_tokens(trained, ratio=None) -> float:
    """Tokens a rule keeping ``ratio`` per row trains (every response token without a ratio)."""
    return float(sum(n if ratio is None else keep_count(n, ratio) for *_, rows in trained for n in rows))


def sft_trainer(model_dir, out, token, token_options=None, pruning="full", options=None, lora=False, mixin=None):
    """A recorded TRL ``SFTTrainer`` on prompt/completion rows with responses of 1 to 4 words;
    ``lora``: a peft model; ``mixin``: more mixin arguments."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtune.kernels import set_default_backend

    set_default_backend("torch")
    torch.manual_seed(0)
    words = ["one two", "three four five", "six", "seven eight nine ten"]  # responses of 1 to 4 words
    rows = [{"prompt": f"add {words[i % 4]}", "completion": f" {words[(i + 1) % 4]}"} for i in range(N)]
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.pad_token = tok.eos_token
    args = trl.SFTConfig(
        output_dir=str(out),
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
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    trainer = recording(trl.SFTTrainer)(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
        pruning=pruning,
        pruning_options=options or {},
        pruning_token=token,
        pruning_token_options=token_options,
        **(mixin or {}),
    )
    trainer.trained = []
    return trainer
