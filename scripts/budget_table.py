"""The compute-budget study's table for one noise level, as docs/RESULTS.md prints it.

Reads a ``scripts/run_budget_study.sh`` grid level (``OUT/noiseNN``): every
``sft/<point>/seed*/summary.json``. Each row is a point's mean ± std exact match over seeds;
its difference to full (at the grid's epochs, 9 in the study), to full cut to the same budget
and to the clean-only oracle, each with the two-sided p of Welch's t-test (``*``: p < 0.05);
its realised ``flops_vs_full``; and the wrong-answer tokens it trained relative to full's
(— where the level has no noise).

  python scripts/budget_table.py OUT/noise20 [--json table.json]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

from qtune.report.tables import welch

FULL = re.compile(r"^full-same_epochs-e(?P<epochs>\d+)$")
ORACLE = re.compile(r"^full-clean_only-same_epochs-e\d+$")
POINT = re.compile(r"^(?P<strategy>[a-z0-9_]+)-(?:[a-z]*[0-9.x]+-)?budget(?P<budget>[0-9.]+)-e\d+$")


def _find(points: dict, pattern: re.Pattern) -> str | None:
    return next((name for name in points if pattern.match(name)), None)


def load(level: Path) -> dict[str, list[dict]]:
    points = {}
    for d in sorted((level / "sft").iterdir()):
        runs = [json.loads(f.read_text()) for f in sorted(d.glob("seed*/summary.json"))]
        if runs:
            points[d.name] = runs
    if _find(points, FULL) is None:
        raise SystemExit(f"{level}/sft/full-same_epochs-e<N>: no finished full run to compare against")
    return points


def em(runs: list[dict]) -> list[float]:
    return [r["eval"]["exact_match"] for r in runs]


def _cell(runs: list[dict], ref: list[dict] | None) -> str:
    if ref is None or runs is ref:
        return "—"
    d, p = welch(em(runs), em(ref))
    return f"{d:+.3f} (p = {p:.2g}{' *' if p < 0.05 else ''})" if not math.isnan(p) else f"{d:+.3f}"


def rows(points: dict[str, list[dict]]) -> list[dict]:
    full_name, oracle_name = _find(points, FULL), _find(points, ORACLE)
    epochs = FULL.match(full_name)["epochs"]
    full, oracle = points[full_name], points.get(oracle_name)
    wrong_full = statistics.mean(r["wrong_tokens_trained"] for r in full)
    out = []
    for name, runs in points.items():
        m = POINT.match(name)
        budget = m["budget"] if m else None
        at_budget = points.get(f"full-budget{budget}-e{epochs}") if budget else None
        e = em(runs)
        wrong = statistics.mean(r["wrong_tokens_trained"] for r in runs)
        out.append(
            {
                "point": name,
                "strategy": m["strategy"] if m else name.split("-")[0],
                "budget": float(budget) if budget else None,
                "seeds": len(runs),
                "em_mean": statistics.mean(e),
                "em_std": statistics.stdev(e) if len(e) > 1 else math.nan,
                "vs_full": _cell(runs, full),
                "vs_full_at_budget": _cell(runs, at_budget),
                "vs_oracle": _cell(runs, oracle),
                "flops_vs_full": statistics.mean(r.get("flops_vs_full") or 1.0 for r in runs),
                "wrong_tokens_vs_full": wrong / wrong_full if wrong_full else math.nan,
            }
        )
    order = {full_name: 0, oracle_name: 1}
    return sorted(
        out, key=lambda r: (order.get(r["point"], 2), -(r["budget"] or 0), r["strategy"] != "full", r["strategy"])
    )


def markdown(table: list[dict]) -> str:
    lines = [
        "| method | budget | seeds | EM | Δ vs full | Δ vs full at the budget | "
        "Δ vs clean-only | FLOPs vs full | wrong-answer tokens vs full |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        full = FULL.match(r["point"])
        name = (
            f"full, {full['epochs']} epochs"
            if full
            else "clean-only (oracle)"
            if ORACLE.match(r["point"])
            else r["strategy"]
        )
        wrong = "—" if math.isnan(r["wrong_tokens_vs_full"]) else f"{r['wrong_tokens_vs_full']:.2f}"
        lines.append(
            f"| {name} | {r['budget'] if r['budget'] else '—'} | {r['seeds']} | "
            f"{r['em_mean']:.3f} ± {r['em_std']:.3f} | {r['vs_full']} | "
            f"{r['vs_full_at_budget']} | {r['vs_oracle']} | {r['flops_vs_full']:.3f} | {wrong} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("level", type=Path, help="a study level, e.g. outputs/budget_study/noise20")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    table = rows(load(args.level))
    print(markdown(table))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
