#!/usr/bin/env python
"""Cost of one model's three kinds of step, side by side: a full fine-tuning step,
a LoRA step (peft, base frozen) and a no-grad scoring forward (what Q-Tuning's separate
scoring pass and the scoring strategies pay).

A step is qtune's own: forward through ``qtune.pruning.batch_stats.lm_stats`` (the same
statistics path training uses), mean loss over the labelled tokens, backward, AdamW step. The
batch is random token ids, B sequences of T tokens, all attended, the second half labelled
(a prompt / response split). Columns: ms_per_step = median over --steps after --warmup;
tokens_per_s = B*T / that; state_mb = the parameters plus the optimiser state (exact tensor
bytes; gradients are freed after every step); step_mb = the peak memory a step adds on top of
what was held before it (CPU: VmHWM after a reset through /proc/self/clear_refs, minus RSS;
CUDA: max_memory_allocated minus memory_allocated): activations and gradients; vs_full = ms /
the full step's. The modes run round-robin, one step each per round, so that a shared
machine's load falls on all of them alike.

    python scripts/bench_models.py --model smollm2_135m --batch 8 --seq 128 --steps 3 \
        --json outputs/bench_models.json
    python scripts/bench_models.py --model /path/to/hf_dir --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def memory_now(device: str) -> float:
    """MB in use now (CUDA: allocated; CPU: resident set), with the peak counter reset."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    except OSError:
        pass
    return _rss_kb("VmRSS") / 1024


def peak_since_reset(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _rss_kb("VmHWM") / 1024


def load(model: str, dtype: str, device: str, gradient_checkpointing: bool):
    """(model, tokenizer) through qtune's loader: a conf/model name (e.g. smollm2_135m) or a path."""
    from qtune.models.hf import build_hf_model

    base = OmegaConf.load(CONF / "model" / "hf.yaml")
    named = CONF / "model" / f"{model}.yaml"
    if named.is_file():
        node = OmegaConf.load(named)
        node.pop("defaults", None)
        cfg = OmegaConf.merge(base, node)
    else:
        cfg = OmegaConf.merge(base, {"path": model})
    cfg.dtype, cfg.gradient_checkpointing = dtype, gradient_checkpointing
    m, tok = build_hf_model(cfg)
    return m.to(device), tok


def make_batch(vocab: int, b: int, t: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    labels = ids.clone()
    labels[:, : t // 2] = -100
    return {
        k: v.to(device) for k, v in {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}.items()
    }


def _tensor_mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def setup_mode(mode: str, args) -> dict:
    """The model (and optimiser) of one mode and its step function."""
    from qtune.pruning.batch_stats import lm_stats
    from qtune.pruning.loss import masked_token_mean
    from qtune.models.adapters import apply_adapter, parameter_counts

    model, _ = load(args.model, args.dtype, args.device, args.gradient_checkpointing)
    if mode == "lora":
        model = apply_adapter(
            OmegaConf.create(
                {
                    "name": "lora",
                    "r": args.lora_r,
                    "alpha": 2 * args.lora_r,
                    "dropout": args.lora_dropout,
                    "target_modules": "all-linear",
                }
            ),
            model,
        )
    total, trainable = parameter_counts(model)
    batch = make_batch(model.get_input_embeddings().num_embeddings, args.batch, args.seq, args.device)
    opt = None
    if mode == "score":
        model.eval()

        def step():
            with torch.no_grad():
                lm_stats(model, batch, backend=args.backend)
    else:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def step():
            stats = lm_stats(model, batch, backend=args.backend)
            masked_token_mean(stats.loss, stats.valid).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return {
        "mode": mode,
        "model": model,
        "opt": opt,
        "step": step,
        "params": total,
        "trainable_params": trainable if mode != "score" else 0,
        "times_s": [],
        "step_mem_mb": 0.0,
    }


def run_step(entry: dict, args, record: bool) -> None:
    gc.collect()
    before = memory_now(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    entry["step"]()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    entry["step_mem_mb"] = max(entry["step_mem_mb"], peak_since_reset(args.device) - before)
    if record:
        entry["times_s"].append(elapsed)


def result_row(entry: dict, args) -> dict:
    ms = 1000 * statistics.median(entry["times_s"])
    opt_state = (
        [t for st in entry["opt"].state.values() for t in st.values() if torch.is_tensor(t)]
        if entry["opt"] is not None
        else []
    )
    return {
        "mode": entry["mode"],
        "params": entry["params"],
        "trainable_params": entry["trainable_params"],
        "ms_per_step": ms,
        "tokens_per_s": args.batch * args.seq / (ms / 1000),
        "state_mb": _tensor_mb(list(entry["model"].parameters()) + opt_state),
        "step_mem_mb": entry["step_mem_mb"],
        "times_s": entry["times_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2_135m", help="a conf/model name or an HF path")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--modes", default="full,lora,score")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--backend", default="torch", help="statistics backend (qtune.kernels)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    entries = [setup_mode(m, args) for m in args.modes.split(",")]
    # round-robin: every round runs each mode once, so load from other processes on a shared
    # machine hits all modes alike instead of whichever happened to run at the time
    for i in range(args.warmup + args.steps):
        for entry in entries:
            run_step(entry, args, record=i >= args.warmup)
    rows = [result_row(e, args) for e in entries]
    full = next((r["ms_per_step"] for r in rows if r["mode"] == "full"), None)
    print(
        f"{args.model}  B={args.batch} T={args.seq}  device={args.device} dtype={args.dtype} "
        f"threads={torch.get_num_threads()}"
    )
    print(
        f"{'mode':<6} {'trainable':>12} {'ms/step':>10} {'tokens/s':>10} {'state MB':>9} {'step MB':>8} {'vs full':>8}"
    )
    for r in rows:
        r["vs_full"] = r["ms_per_step"] / full if full else None
        print(
            f"{r['mode']:<6} {r['trainable_params']:>12,} {r['ms_per_step']:>10.0f} "
            f"{r['tokens_per_s']:>10.1f} {r['state_mb']:>9.0f} {r['step_mem_mb']:>8.0f} "
            f"{r['vs_full'] if r['vs_full'] is not None else float('nan'):>8.2f}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
