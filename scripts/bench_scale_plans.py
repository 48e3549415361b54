"""Epoch-plan cost at scale: each strategy's plan, old implementation beside new, one process.

For each N the script fills one statistics store (scores with ties and 1 % NaN) and times every
strategy's epoch plan twice: ``new`` (the strategies as they are) and ``old`` (the previous
implementations kept in ``tests/plan_reference.py``, patched into the same strategy objects), and
checks that both plan the same ids. Columns: ``s`` min of ``--repeats`` timed calls (one call
when it takes over 10 s); ``peak_mb``
the RSS high-water mark above the level before one separate, untimed call (glibc is told to
serve large blocks by mmap and return freed memory at once, so the peak counts that call's own
allocations); ``plan_hash`` the hash of a plan of N/2 ascending ids and of N shuffled ids.

    python scripts/bench_scale_plans.py --sizes 1e5 1e6 [1e7] --json out.json

Run it with one thread (``OMP_NUM_THREADS=1``); 1e7 needs ~4 GB and several minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import plan_reference as ref  # noqa: E402

from qtune.pruning.core import plan_hash  # noqa: E402
from qtune.strategies.seta import KMEANS_FIT_MAX  # noqa: E402
from qtune.pruning.statistics_store import StatisticsStore  # noqa: E402
from qtune.strategies import EpochContext, build_strategy  # noqa: E402

_MMAP_THRESHOLD, _TRIM_THRESHOLD = -3, -1  # glibc mallopt parameters


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _mallopt(param: int, value: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(param, value)
        if param == _TRIM_THRESHOLD and value == 0:
            libc.malloc_trim(0)
    except OSError:
        pass


def peak_mb(fn) -> float:
    """RSS high-water mark above the current level during one call of ``fn``, in MB."""
    getattr(fn, "prime", lambda: None)()
    gc.collect()
    _mallopt(_MMAP_THRESHOLD, 64 << 10)
    _mallopt(_TRIM_THRESHOLD, 0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan")
    base = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM") - base
    _mallopt(_MMAP_THRESHOLD, 32 << 20)
    _mallopt(_TRIM_THRESHOLD, 1 << 30)
    return peak / 1024


def best_time(fn, repeats: int, enough: float = 10.0) -> float:
    """Min over ``repeats`` calls; a call slower than ``enough`` seconds is not repeated."""
    best = float("inf")
    for _ in range(repeats):
        getattr(fn, "prime", lambda: None)()
        gc.collect()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        if best > enough:
            break
    return best


def filled_store(n: int, seed: int = 0) -> StatisticsStore:
    """Every sample scored once: scores on a 1/1000 grid (ties) and 1 % NaN, as after an epoch."""
    g = torch.Generator().manual_seed(seed)
    st = StatisticsStore(n)
    vals = {k: (torch.randint(0, 1000, (n,), generator=g).float() + 1) / 1000 for k in ("loss", "entropy", "el2n")}
    vals["p_label"] = torch.rand(n, generator=g)
    vals["margin"] = vals["p_label"] - 0.5
    vals["accuracy"] = (vals["p_label"] > 0.5).float()
    st.update(torch.arange(n), 0, num_tokens=torch.full((n,), 8), **vals)
    holes = torch.randperm(n, generator=g)[: n // 100]
    for k in ("loss", "entropy", "el2n", "p_label"):
        getattr(st, k)[holes] = float("nan")
    return st


def cases(st: StatisticsStore, n: int):
    """(label, new plan, old plan): each a function returning the plan's ids."""

    def run(name, epoch, patches=(), **opts):
        def plan():
            strat = build_strategy(name, seed=0, **opts)
            with mock.patch.multiple(patches[0], **patches[1]) if patches else contextlib.nullcontext():
                if name == "el2n":
                    strat.observe(EpochContext(epoch, 10, n, 0, st))
                return strat.epoch_plan(EpochContext(epoch, 10, n, 0, st)).sample_ids

        return plan

    def seta_old():
        strat = build_strategy("seta", seed=0)
        return ref.seta_plan(strat, EpochContext(1, 10, n, 0, st))[0]

    def rs2_warm(keep, epoch):
        box = {}

        def prime():  # untimed: the previous epoch fills the strategy's cache
            box["s"] = build_strategy("rs2", seed=0, keep_ratio=keep)
            box["s"].epoch_plan(EpochContext(epoch - 1, 200, n, 0, None))

        def plan():
            return box["s"].epoch_plan(EpochContext(epoch, 200, n, 0, None)).sample_ids

        plan.prime = prime
        prime()
        return plan

    out = []
    for e in (1, 29, 99):
        out.append((f"rs2 0.1 epoch {e}", run("rs2", e, keep_ratio=0.1), lambda e=e: ref.rs2_plan(n, 0.1, e, 0)))
    out.append(("rs2 0.7 epoch 29 (cold)", run("rs2", 29, keep_ratio=0.7), lambda: ref.rs2_plan(n, 0.7, 29, 0)))
    out.append(("rs2 0.7 epoch 29 (warm)", rs2_warm(0.7, 29), lambda: ref.rs2_plan(n, 0.7, 29, 0)))
    el2n = ("qtune.strategies.el2n", {"select_el2n": ref.select_el2n})
    out.append(("el2n (selection epoch)", run("el2n", 1), run("el2n", 1, el2n)))
    ccs = ("qtune.strategies.ccs", {"select_ccs": ref.select_ccs})
    out.append(("ccs (el2n)", run("ccs", 1), run("ccs", 1, ccs)))
    out.append(("seta (k-means)", run("seta", 1), seta_old))
    denoise = ("qtune.strategies.denoise", {"denoise_plan": ref.denoise_plan})
    out.append(("denoise", run("denoise", 2), run("denoise", 2, denoise)))
    from qtune.strategies.qtuning import QTuning

    qt = (QTuning, {"_split_epoch": QTuning._split})
    out.append(("qtuning level=epoch", run("qtuning", 1, level="epoch"), run("qtuning", 1, qt, level="epoch")))
    return out


def bench_size(n: int, repeats: int, only: list[str] | None) -> list[dict]:
    st = filled_store(n)
    rows = []
    for label, new, old in cases(st, n):
        if only and not any(o in label for o in only):
            continue
        a, b = new(), old()
        row = {"n": n, "plan": label, "same": bool(torch.equal(a, b))}
        if label.startswith("seta") and n * 0.9 > KMEANS_FIT_MAX:  # a sample fit, by design
            both = torch.isin(a, b).sum().item()
            row["same"] = f"k-means fitted on a sample: {both / max(len(a), len(b)):.3f} of ids shared"
        for side, fn in (("new", new), ("old", old)):
            row[f"{side}_s"] = best_time(fn, repeats)
            row[f"{side}_peak_mb"] = peak_mb(fn)
        rows.append(row)
        print(_line(row), flush=True)
    half = torch.arange(0, n, 2)
    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    for label, ids in (("plan_hash, N/2 ascending ids", half), ("plan_hash, N shuffled ids", shuffled)):
        row = {"n": n, "plan": label, "same": plan_hash(ids) == ref.plan_hash(ids)}
        row["new_s"] = best_time(lambda: plan_hash(ids), repeats)
        row["old_s"] = best_time(lambda: ref.plan_hash(ids), repeats)
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    mem = ""
    if "new_peak_mb" in row:
        mem = f" | {row['old_peak_mb']:.0f} | {row['new_peak_mb']:.0f}"
    else:
        mem = " | | "
    return f"| {row['n']:.0e} | {row['plan']} | {row['old_s']:.3f} | {row['new_s']:.3f}{mem} | {row['same']} |"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6], help="N values (1e7 is slow)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="plans whose label contains one of these")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| N | plan | old s | new s | old peak MB | new peak MB | same plan |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for n in args.sizes:
        rows += bench_size(int(n), args.repeats, args.only)
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    if not all(r["same"] is True or r["plan"].startswith("seta") for r in rows):
        raise SystemExit("a new plan differs from the old one")


if __name__ == "__main__":
    main()
