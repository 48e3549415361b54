#!/usr/bin/env python
"""The pruning machinery at 10^5 to 10^7 samples, every part in one run, old beside new.

Four tables, each measured in this run with one thread:

1. ``plans``: every strategy's epoch plan on a filled store, the current implementation beside
   the previous one (``scripts/bench_scale_plans.py``; same-plan check included);
2. ``core``: one epoch of ``record_batch`` steps, ``finish_epoch``, the mid-epoch and
   end-of-epoch checkpoints (size, save, load) and peak memory, the dense per-epoch buffers
   beside the per-step rows they replaced, one fresh process per point
   (``scripts/bench_scale_core.py``);
3. ``sampler``: building one rank's share of a plan of N/2 ids, ``tolist``, and one pass of a
   ``BatchSampler`` over it (what a loader does each epoch);
4. ``hf_state``: the Hugging Face mixin's pruning state over ten epochs of ``random`` 0.5 (the
   core keeps past plans in memory; a checkpoint holds only what resume needs): size per
   epoch, which stays flat.

    OMP_NUM_THREADS=1 python scripts/bench_scale.py --sizes 1e5 1e6 1e7 --json docs/results/bench_scale.json

1e7 needs about 4 GB and some minutes (the old implementations take most of it).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_scale_plans  # noqa: E402

from qtune.pruning.core import PruningCore  # noqa: E402
from qtune.pruning.sampler import shard_plan  # noqa: E402
from qtune.strategies import build_strategy  # noqa: E402


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def sampler_rows(n: int, repeats: int) -> list[dict]:
    plan = torch.arange(0, n, 2)
    ids = shard_plan(plan, seed=0, epoch=1, rank=0, world_size=1)
    batches = torch.utils.data.BatchSampler(ids.tolist(), batch_size=16, drop_last=False)
    return [
        {
            "n": n,
            "build_s": best(lambda: shard_plan(plan, seed=0, epoch=1, rank=0, world_size=1), repeats),
            "tolist_s": best(ids.tolist, repeats),
            "batch_pass_s": best(lambda: sum(1 for _ in batches), repeats),
        }
    ]


def hf_state_rows(n: int, epochs: int = 10) -> list[dict]:
    """State size per epoch for a core built as the HF mixin builds it (past plans kept)."""
    core = PruningCore(build_strategy("random", seed=0, keep_ratio=0.5), seed=0, num_samples=n, keep_past_plans=True)
    rows = []
    for epoch in range(epochs):
        core.plan_epoch(epoch, epochs)
        core.finish_epoch(epoch, elapsed=0.0)
        buf = io.BytesIO()
        torch.save(core.state_dict(epoch + 1), buf)
        rows.append(
            {"n": n, "epoch": epoch, "state_mb": round(buf.tell() / 2**20, 2), "plans_in_memory": len(core.plans)}
        )
    return rows


def core_rows(sizes: list[str], repeats: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "core.json")
        cmd = [sys.executable, str(HERE / "bench_scale_core.py"), "--sizes", *sizes, "--repeats", str(repeats)]
        subprocess.run([*cmd, "--json", str(out)], check=True)
        return json.loads(out.read_text())["rows"]


def print_table(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    print(f"\n## {title}\n\n| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["1e5", "1e6"], help="training-set sizes (1e7 takes minutes)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per point (the fastest is kept)")
    ap.add_argument("--parts", nargs="+", default=["plans", "core", "sampler", "hf_state"])
    ap.add_argument("--json", help="write every table here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sizes = [int(float(s)) for s in args.sizes]
    result: dict[str, list[dict]] = {}
    if "plans" in args.parts:
        print("## plans\n")
        result["plans"] = [r for n in sizes for r in bench_scale_plans.bench_size(n, args.repeats, None)]
    if "core" in args.parts:
        result["core"] = core_rows(args.sizes, args.repeats)
        print_table("core", result["core"])
    if "sampler" in args.parts:
        result["sampler"] = [r for n in sizes for r in sampler_rows(n, args.repeats)]
        print_table("sampler", result["sampler"])
    if "hf_state" in args.parts:
        result["hf_state"] = [r for n in sizes for r in hf_state_rows(n)]
        print_table("hf_state", result["hf_state"])
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats}
        Path(args.json).write_text(json.dumps({"meta": meta, **result}, indent=1) + "\n")


if __name__ == "__main__":
    main()
