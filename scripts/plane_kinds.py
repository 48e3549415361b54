"""Where each kind of training item lands on Q-Tuning's error-uncertainty plane.

Reads a run's ``scores.npz`` (final per-sample perplexity and entropy, with each item's kind)
and splits the plane at the run's α quantiles as ``report_plots.plot_plane`` draws it: Q1 high
PPL and high entropy, Q2 high PPL and low entropy, Q3 low PPL and low entropy, Q4 low PPL and
high entropy; the rest is the middle band. Prints, per kind, the share of its items in each
region (a table) and writes JSON with ``--json``.

  python scripts/plane_kinds.py RUN_DIR [RUN_DIR ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REGIONS = ("Q1", "Q2", "Q3", "Q4", "middle")


def regions(ppl: np.ndarray, ent: np.ndarray, alpha: float) -> np.ndarray:
    p_lo, p_hi = np.quantile(ppl, [alpha, 1 - alpha])
    e_lo, e_hi = np.quantile(ent, [alpha, 1 - alpha])
    out = np.full(len(ppl), "middle", dtype=object)
    out[(ppl > p_hi) & (ent > e_hi)] = "Q1"
    out[(ppl > p_hi) & (ent <= e_lo)] = "Q2"
    out[(ppl <= p_lo) & (ent <= e_lo)] = "Q3"
    out[(ppl <= p_lo) & (ent > e_hi)] = "Q4"
    return out


def kind_shares(run_dir: Path) -> dict:
    z = np.load(run_dir / "scores.npz", allow_pickle=False)
    ppl, ent = z["ppl"].astype(float), z["entropy"].astype(float)
    ok = np.isfinite(ppl) & np.isfinite(ent)
    summary = json.loads((run_dir / "summary.json").read_text())
    detail = summary.get("epochs_detail") or [{}]
    alpha = float(detail[-1].get("alpha", 0.25) or 0.25)
    where = regions(ppl[ok], ent[ok], alpha)
    kinds = z["kind"].astype(str)[ok] if "kind" in z.files else np.full(int(ok.sum()), "item")
    table = {}
    for kind in sorted(set(kinds)):
        m = kinds == kind
        table[kind] = {"n": int(m.sum()), **{r: float((where[m] == r).mean()) for r in REGIONS}}
    return {"run": str(run_dir), "alpha": alpha, "shares": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = [kind_shares(r) for r in args.runs]
    for res in results:
        print(f"{res['run']}  (alpha {res['alpha']:.2f})")
        print("| kind | n | " + " | ".join(REGIONS) + " |")
        print("|---|---|" + "---|" * len(REGIONS))
        for kind, row in res["shares"].items():
            print(f"| {kind} | {row['n']} | " + " | ".join(f"{row[r]:.2f}" for r in REGIONS) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
