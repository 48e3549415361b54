#!/usr/bin/env python
"""What the pruning core's per-epoch statistics cost as the training set grows: the dense
buffers by sample id (``new``) against the per-step rows they replaced (``old``, the core of
``--old-rev`` loaded from git), side by side, one fresh process per point.

One epoch of the ``full`` strategy over N samples in steps of ``--batch`` ids, each step's scores
as ``sample_scores`` gives them (six float32 fields and int64 token counts, new tensors each
step). Columns: ``record_us`` mean ``record_batch`` time per step; ``half_held_mb`` resident
memory the epoch's statistics added by half the epoch, ``held_mb`` by its end (after the
mid-epoch checkpoint's temporaries), ``tensor_mb`` their tensors' bytes (no object overhead); ``finish_s``
``finish_epoch``; ``mid_*`` a checkpoint of the core's state at half the epoch (file size, save =
``state_dict`` + ``torch.save``, load = ``torch.load(weights_only=True)`` + ``load_state_dict``);
``end_*`` the same after the epoch; ``peak_mb`` the process's peak RSS.

    python scripts/bench_scale_core.py --sizes 1e5 1e6 1e7 --modes new old
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_REV = "2f3525a"  # the last commit whose core kept per-step rows
COLUMNS = [
    "mode",
    "n",
    "record_us",
    "half_held_mb",
    "held_mb",
    "tensor_mb",
    "finish_s",
    "mid_mb",
    "mid_save_s",
    "mid_load_s",
]
COLUMNS += ["end_mb", "end_save_s", "end_load_s", "peak_mb"]


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def old_core_class(rev: str, tmp: str):
    """PruningCore as of ``rev``, importing its own resume_state."""
    for name in ("core", "resume_state"):
        src = subprocess.run(
            ["git", "show", f"{rev}:qtune/pruning/{name}.py"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        src = src.replace("from qtune.pruning.resume_state import", "from _old_resume_state import")
        Path(tmp, f"_old_{name}.py").write_text(src)
    sys.path.insert(0, tmp)
    import _old_core

    return _old_core.PruningCore


def checkpoint(core, make_core, epoch: int, path: Path, repeats: int) -> dict:
    """Size, and the fastest of ``repeats`` saves and loads (the disk is shared)."""
    import torch

    save = load = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.save(core.state_dict(epoch), path)
        save = min(save, time.perf_counter() - t0)
        t0 = time.perf_counter()
        make_core().load_state_dict(torch.load(path, weights_only=True))
        load = min(load, time.perf_counter() - t0)
    size = path.stat().st_size / 2**20
    path.unlink()
    return {"mb": round(size, 1), "save_s": round(save, 3), "load_s": round(load, 3)}


def one_point(mode: str, n: int, batch: int, rev: str, repeats: int) -> dict:
    import torch

    from qtune.pruning.train_step import StepRecord
    from qtune.strategies import build_strategy

    tmp = tempfile.mkdtemp()
    if mode == "old":
        cls = old_core_class(rev, tmp)
    else:
        from qtune.pruning.core import PruningCore as cls

    def make_core():
        return cls(build_strategy("full", seed=0), seed=0, num_samples=n)

    core = make_core()
    core.plan_epoch(0, 1)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=gen)
    pool = [
        {k: torch.rand(batch, generator=gen) for k in ("loss", "entropy", "el2n", "p_label", "margin", "accuracy")}
        | {"num_tokens": torch.randint(1, 512, (batch,), generator=gen)}
        for _ in range(32)
    ]
    one = torch.ones(())
    steps = -(-n // batch)
    base, spent, out = rss_mb(), 0.0, {"mode": mode, "n": n}
    for i in range(steps):
        if i == steps // 2:
            out["half_held_mb"] = round(rss_mb() - base, 1)
            mid = checkpoint(core, make_core, 0, Path(tmp, "mid.pt"), repeats)
            out.update({f"mid_{k}": v for k, v in mid.items()})
        ids = order[i * batch : (i + 1) * batch]
        scores = {k: v[: ids.numel()].clone() for k, v in pool[i % len(pool)].items()}
        record = StepRecord(scores["loss"].mean(), ids, scores, one, one, one)
        t0 = time.perf_counter()
        core.record_batch(record, i)
        spent += time.perf_counter() - t0
    out["record_us"] = round(spent / steps * 1e6, 1)
    out["held_mb"] = round(rss_mb() - base, 1)
    if mode == "old":
        held = sum(t.numel() * t.element_size() for r in core._rows for t in r.values())
    else:
        held = core._buffers.nbytes
    out["tensor_mb"] = round(held / 2**20, 1)
    t0 = time.perf_counter()
    core.finish_epoch(0, elapsed=0.0)
    out["finish_s"] = round(time.perf_counter() - t0, 3)
    end = checkpoint(core, make_core, 0, Path(tmp, "end.pt"), repeats)
    out.update({f"end_{k}": v for k, v in end.items()})
    out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["1e5", "1e6"], help="training-set sizes (1e7 takes minutes)")
    ap.add_argument("--modes", nargs="+", default=["new", "old"], choices=["new", "old"])
    ap.add_argument("--batch", type=int, default=64, help="ids per step")
    ap.add_argument("--repeats", type=int, default=1, help="checkpoint saves and loads per point (the fastest)")
    ap.add_argument("--old-rev", default=OLD_REV, help="git revision of the rows-keeping core")
    ap.add_argument("--json", default=str(ROOT / "docs/results/bench_scale_core.json"))
    ap.add_argument("--one", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(one_point(args.one[0], int(float(args.one[1])), args.batch, args.old_rev, args.repeats)))
        return
    rows = []
    for size in args.sizes:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--one", mode, size, "--batch", str(args.batch), "--old-rev", args.old_rev]
            cmd += ["--repeats", str(args.repeats)]
            env = dict(os.environ, OMP_NUM_THREADS="1")
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                sys.exit(f"{mode} at {size} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    meta = {"batch": args.batch, "old_rev": args.old_rev, "repeats": args.repeats}
    Path(args.json).write_text(json.dumps(meta | {"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
