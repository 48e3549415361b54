"""A Trainer (or TRL SFTTrainer) with PruningMixin on a tiny Llama, run in one process or under
``torchrun``; each rank writes what it trained and holds to ``<out>/rank<r>.json``.

    python -m torch.distributed.run --nproc-per-node 2 hf_job.py --model M --out O --pruning random
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import torch

N, T, PROMPT = 40, 12, 4


class LMItems(torch.utils.data.Dataset):
    """Fixed-length items whose first PROMPT tokens are the prompt (label -100)."""

    def __init__(self, n=N, vocab=40, seed=0):
        self.ids = torch.randint(5, vocab, (n, T), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[:PROMPT] = -100
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(T, dtype=torch.long), "labels": labels}


def chat_rows(n=N):
    words = ["one two", "three four", "five six", "seven eight"]
    return [{"prompt": f"add {words[i % 4]}", "completion": f" {words[(i + 1) % 4]}"} for i in range(n)]


def digest(*tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def build(a):
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from qtune.hf import PruningMixin
    from qtune.kernels import set_default_backend

    set_default_backend("torch")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    if a.peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    common = dict(
        output_dir=a.out,
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.accumulation,
        num_train_epochs=a.epochs,
        learning_rate=1e-2,
        lr_scheduler_type="cosine",
        report_to=[],
        use_cpu=not a.gpu,
        seed=0,
        disable_tqdm=True,
        save_strategy="epoch" if a.save_epochs else "steps" if a.save_steps else "no",
        save_steps=a.save_steps or 500,
        dataloader_num_workers=0,
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not a.gpu:
        common["ddp_backend"] = "gloo"
    if a.zero:  # DeepSpeed ZeRO stage a.zero (on CPU: DS_ACCELERATOR=cpu, gloo)
        common["deepspeed"] = {
            "zero_optimization": {"stage": a.zero},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",
            "gradient_clipping": "auto",
        }
    if a.fsdp:
        common["fsdp"] = "full_shard auto_wrap"
        common["fsdp_config"] = {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}
    if a.trainer == "sft":
        import datasets
        import trl

        tok = AutoTokenizer.from_pretrained(a.model)
        tok.pad_token = tok.eos_token
        sft_config = {"max_length": 32, **json.loads(a.sft_config)}  # e.g. packing=True
        base, args = trl.SFTTrainer, trl.SFTConfig(**sft_config, **common)
        kwargs = {"train_dataset": datasets.Dataset.from_list(chat_rows()), "processing_class": tok}
    else:
        from transformers import Trainer, TrainingArguments

        base, args, kwargs = Trainer, TrainingArguments(**common), {"train_dataset": LMItems()}

    trained: dict[int, list[int]] = {}

    class Recorded(PruningMixin, base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and "sample_id" in inputs:
                trained.setdefault(self._epoch, []).extend(inputs["sample_id"].tolist())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = Recorded(
        model=model,
        args=args,
        pruning=a.pruning,
        pruning_options=json.loads(a.options),
        pruning_budget=a.budget,
        pruning_token=a.token,
        pruning_token_options=json.loads(a.token_options) if a.token else None,
        pruning_reference=a.reference,
        **kwargs,
    )

    class StopAfterSave(TrainerCallback):  # a crash right after a checkpoint is written
        def on_save(self, args, state, control, **kw):
            if state.global_step == a.stop_after:
                os._exit(0)

    trainer.add_callback(StopAfterSave())
    return trainer, trained


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--trainer", choices=["trainer", "sft"], default="trainer")
    p.add_argument("--pruning", default="random")
    p.add_argument("--options", default="{}")
    p.add_argument("--sft-config", default="{}")  # more SFTConfig arguments, as JSON
    p.add_argument("--budget", type=float, default=None)
    p.add_argument("--token", default=None)  # a token rule composed with --pruning
    p.add_argument("--token-options", default="{}")
    p.add_argument("--reference", default=None)  # pruning_reference: "self" or a directory
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--save-steps", type=int, default=0)
    p.add_argument("--save-epochs", action="store_true")
    p.add_argument("--stop-after", type=int, default=-1)
    p.add_argument("--resume", default=None)
    p.add_argument("--peft", action="store_true")
    p.add_argument("--fsdp", action="store_true")  # FSDP2 through Trainer: GPU process groups only
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--zero", type=int, default=0)
    a = p.parse_args()
    trainer, trained = build(a)
    trainer.train(resume_from_checkpoint=a.resume)
    store = trainer._pruning_store.state_dict()
    rank = trainer.args.process_index
    params = [t for _, t in sorted(trainer.model.named_parameters())]
    report = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "trained": {str(e): ids for e, ids in trained.items()},
        "plans": {str(e): sorted(p.sample_ids.tolist()) for e, p in trainer.pruning_plans.items()},
        "weights": {
            str(e): None if p.weights is None else p.weights.tolist() for e, p in trainer.pruning_plans.items()
        },
        "history": [{k: v for k, v in h.items() if k != "time_s"} for h in trainer.pruning_history],
        "lengths": [len(trainer.train_dataset[i]["input_ids"]) for i in range(len(trainer.train_dataset))],
        "store": digest(*(v for k, v in sorted(store.items()) if torch.is_tensor(v))),
        "params": digest(*params),
        "last_lr": trainer.lr_scheduler.get_last_lr()[0],
        "totals": {k: float(v) for k, v in trainer.pruning_totals.items() if not k.endswith("time_s")},
        "flops": trainer.pruning_flops,
        "param_counts": list(trainer._param_counts),
    }
    if trainer.pruning_budget is not None:  # the share of the full run's FLOPs spent
        report["budget_spent"] = trainer.pruning_budget.spent / trainer.pruning_budget.full_run_flops
    Path(a.out, f"rank{rank}.json").write_text(json.dumps(report))
    if torch.distributed.is_initialized():  # gloo aborts now and then at exit without this
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
