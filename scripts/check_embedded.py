"""Check the embedded default task end to end with a plain torch loop (no Lightning).

Builds (or reuses) the cached base, then prints: the base's raw-format exact match, its
instruction-format exact match before fine-tuning, and after full-data SFT (AdamW, linear warmup
then cosine decay, response-only token-mean cross entropy), with the wall times. ``--drop-noisy``
trains on the clean and duplicate items only, to measure what the label noise costs.

    python scripts/check_embedded.py [--epochs 3 --lr 1e-3 --batch-size 32] [--drop-noisy]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import torch

from qtune.data.embedded import build_embedded_task
from qtune.data.sft import IGNORE_INDEX
from qtune.eval.greedy import greedy_exact_match
from qtune.models.base_cache import load_base, load_or_build_base, raw_generation_eval, base_recipe


def sft(
    model,
    bundle,
    epochs: int,
    lr: float,
    batch_size: int,
    warmup: float,
    seed: int,
    drop_noisy: bool = False,
    weight_decay: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> dict:
    ids = [i for i, m in enumerate(bundle.train_meta) if not (drop_noisy and m["kind"] == "noisy")]
    steps_per_epoch = math.ceil(len(ids) / batch_size)
    total = steps_per_epoch * epochs
    warm = max(int(warmup * total), 1) if warmup else 0
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    rng = random.Random(seed)
    model.train()
    step, t0 = 0, time.time()
    for epoch in range(epochs):
        order = ids[:]
        rng.shuffle(order)
        total_loss = 0.0
        for s in range(0, len(order), batch_size):
            batch = bundle.collate([bundle.train[i] for i in order[s : s + batch_size]])
            if step < warm:
                f = (step + 1) / warm
            else:
                p = (step - warm) / max(total - warm, 1)
                f = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
            for g in opt.param_groups:
                g["lr"] = lr * f
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.item()
            step += 1
        print(
            f"  epoch {epoch + 1}/{epochs}: mean loss {total_loss / steps_per_epoch:.4f} ({time.time() - t0:.1f}s)",
            flush=True,
        )
    return {"steps": total, "train_time_s": round(time.time() - t0, 2), "samples": len(ids) * epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warmup", type=float, default=0.05, help="warmup share of all steps")
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-fraction", type=float, default=None)
    ap.add_argument("--drop-noisy", action="store_true")
    ap.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model.base recipe key (repeatable), e.g. --base steps=200",
    )
    ap.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an embedded data key (repeatable), e.g. --data num_train=2000",
    )
    ap.add_argument("--out", default=None, help="write the measured numbers to this JSON file")
    args = ap.parse_args()

    model_cfg = {"base": _pairs(args.base)}
    t0 = time.time()
    path = load_or_build_base(model_cfg, cache_dir=args.cache_dir)
    base_s = time.time() - t0
    with open(os.path.join(path, "qtune_base.json")) as f:
        meta = json.load(f)
    torch.manual_seed(args.seed)
    model, tok = load_base(path)
    raw = greedy_exact_match(model, raw_generation_eval(base_recipe(model_cfg), tok), tok.eos_id, tok.pad_id)
    data_cfg = _pairs(args.data)
    if args.noise_fraction is not None:
        data_cfg["noise_fraction"] = args.noise_fraction
    t1 = time.time()
    bundle = build_embedded_task(data_cfg, tokenizer=tok)
    data_s = time.time() - t1
    t2 = time.time()
    before = greedy_exact_match(model, bundle.generation, bundle.eos_id, bundle.pad_id)
    eval_s = time.time() - t2
    print(f"base: {path} (load/build {base_s:.1f}s; built in {meta['build_time_s']}s)")
    print(f"base raw-format exact match {raw['exact_match']:.3f} {raw['per_group']}")
    print(f"instruction exact match before SFT {before['exact_match']:.3f} (eval {eval_s:.1f}s)")
    print(f"data: {bundle.info['train_kinds']} built in {data_s:.1f}s")
    run = sft(
        model,
        bundle,
        args.epochs,
        args.lr,
        args.batch_size,
        args.warmup,
        args.seed,
        args.drop_noisy,
        args.weight_decay,
        args.min_lr_ratio,
    )
    after = greedy_exact_match(model, bundle.generation, bundle.eos_id, bundle.pad_id)
    print(
        f"SFT {run} -> clean eval exact match {after['exact_match']:.3f} "
        + json.dumps({k: round(v, 3) for k, v in after["per_group"].items()})
    )
    print(f"total wall time {time.time() - t0:.1f}s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "base_load_or_build_s": round(base_s, 2),
                    "base_meta": meta,
                    "raw_em": raw,
                    "instruction_em_before": before,
                    "sft": run,
                    "instruction_em_after": after,
                    "total_s": round(time.time() - t0, 2),
                },
                f,
                indent=1,
            )


def _pairs(items: list[str]) -> dict:
    """``["steps=200", "lr=0.001"]`` -> ``{"steps": 200, "lr": 0.001}`` (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, _, value = item.partition("=")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "5e-3" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


if __name__ == "__main__":
    main()
