#!/usr/bin/env python
"""The token-rule study's table (``scripts/run_token_study.sh``), as docs/RESULTS.md prints it.

Reads every ``OUT/sft/<point>/seed*/`` run (summary.json and its config). One row per point:
the sample strategy and the token rule with their ratios; exact match mean ± std over seeds
(sample std); its difference to full with the two-sided p of Welch's t-test (``*``: p < 0.05);
FLOPs vs full (the run's ``flops_estimate``, which includes the reference's forwards and the
cost of computing a loss file); the measured token keep ratio (tokens trained per response
token of the trained samples); wrong-answer tokens trained relative to full's; and the
reference: its source and what training it cost relative to full (not in the run's FLOPs: a
reference trained once serves every run that reads it). Below the table, each reference run's
own exact match and training FLOPs.

  python scripts/token_study_table.py OUT [--json table.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from qtune.report.collect import Run, load_run
from qtune.report.tables import welch

SAMPLE_ORDER = ("full", "random", "qtuning")
RULE_ORDER = ("random", "ppl", "rho1", "tokencleaning", "dft", "eaft", "asft")


def load(out: Path) -> dict[str, list[Run]]:
    """Runs per point directory of ``OUT/sft``; the full point must be there."""
    root = out / "sft"
    if not root.is_dir():
        raise SystemExit(f"{root}: no such directory (the study's points are under OUT/sft)")
    points = {}
    for d in sorted(root.iterdir()):
        runs = [load_run(f.parent) for f in sorted(d.glob("seed*/summary.json"))]
        if runs:
            points[d.name] = runs
    if not any(is_full(r[0]) for r in points.values()):
        raise SystemExit(f"{root}: no finished full run (strategy full, no token rule) to compare against")
    return points


def is_full(run: Run) -> bool:
    return run.strategy == "full" and not run.strategy_cfg.get("token")


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    return m, (math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0)


def mean(runs: list[Run], get) -> float:
    values = [get(r) for r in runs]
    return mean_std([math.nan if v is None else float(v) for v in values])[0]


def sample_label(cfg: dict) -> str:
    name = cfg.get("name", "?")
    if name == "random":
        return f"random {cfg.get('keep_ratio'):g}"
    if name == "qtuning":
        return f"Q-Tuning {cfg.get('sample_ratio'):g} × {cfg.get('token_ratio'):g}"
    return name


def token_label(token: dict | None) -> str:
    if not token:
        return "—"
    parts = [token["name"]]
    if token.get("keep_ratio") is not None:
        parts.append(f"{token['keep_ratio']:g}")
    if token.get("lam") is not None:
        parts.append(f"λ {token['lam']:g}")
    if token["name"] in ("rho1", "tokencleaning") and token.get("scope"):
        parts.append(str(token["scope"]))
    return " ".join(parts)


def reference_of(run: Run) -> dict:
    """(source, the reference run's directory, its training FLOPs) from the run's summary."""
    ref = run.summary.get("reference") or {}
    info = ref.get("file_reference") if ref.get("source") == "file" else ref
    info = info or {}
    return {
        "source": ref.get("source"),
        "run_dir": info.get("run_dir"),
        "training_flops": info.get("training_flops"),
        "file_flops": ref.get("file_flops"),
    }


def _order(runs: list[Run]) -> tuple:
    cfg = runs[0].strategy_cfg
    token = cfg.get("token") or {}
    s = SAMPLE_ORDER.index(cfg.get("name")) if cfg.get("name") in SAMPLE_ORDER else len(SAMPLE_ORDER)
    t = RULE_ORDER.index(token["name"]) + 1 if token.get("name") in RULE_ORDER else (0 if not token else 99)
    return (bool(token) and cfg.get("name") != "full", s, t, json.dumps(token, sort_keys=True))


def rows(points: dict[str, list[Run]]) -> list[dict]:
    full = next(runs for runs in points.values() if is_full(runs[0]))
    em_full = [r.eval_value("exact_match") for r in full]
    flops_full = mean(full, lambda r: r.summary.get("flops_estimate"))
    wrong_full = mean(full, lambda r: r.summary.get("wrong_tokens_trained"))
    out = []
    for name, runs in sorted(points.items(), key=lambda kv: _order(kv[1])):
        ems = [r.eval_value("exact_match") for r in runs]
        em, std = mean_std(ems)
        delta, p = (math.nan, math.nan) if runs is full else welch(ems, em_full)
        refs = [reference_of(r) for r in runs]
        out.append(
            {
                "point": name,
                "sample": sample_label(runs[0].strategy_cfg),
                "token": token_label(runs[0].strategy_cfg.get("token")),
                "seeds": len(runs),
                "em_mean": em,
                "em_std": std,
                "delta_vs_full": delta,
                "p_vs_full": p,
                "flops_vs_full": mean(runs, lambda r: r.summary.get("flops_estimate")) / flops_full,
                "token_keep_ratio": mean(runs, lambda r: r.summary.get("token_keep_ratio")),
                "wrong_tokens_vs_full": mean(runs, lambda r: r.summary.get("wrong_tokens_trained")) / wrong_full
                if wrong_full
                else math.nan,
                "reference": refs[0]["source"],
                "reference_training_vs_full": mean_std(
                    [math.nan if x["training_flops"] is None else x["training_flops"] for x in refs]
                )[0]
                / flops_full,
                "reference_runs": sorted({x["run_dir"] for x in refs if x["run_dir"]}),
            }
        )
    return out


def reference_lines(table: list[dict], flops_full: float) -> list[str]:
    """One line per reference point (its seeds' runs, as the rows used them): its own exact
    match and training cost."""
    seen: dict[Path, tuple[set, list[str]]] = {}
    for row in table:
        for d in row["reference_runs"]:
            dirs, users = seen.setdefault(Path(d).parent, (set(), []))
            dirs.add(d)
            if row["point"] not in users:
                users.append(row["point"])
    lines = []
    for parent, (dirs, users) in seen.items():
        found = [load_run(Path(d)) for d in sorted(dirs) if (Path(d) / "summary.json").is_file()]
        if not found:
            lines.append(f"- reference `{parent}`: its runs are not here (moved?); used by {', '.join(users)}")
            continue
        em, std = mean_std([r.eval_value("exact_match") for r in found])
        cost = mean(found, lambda r: r.summary.get("flops_estimate")) / flops_full
        lines.append(
            f"- reference `{parent.name}` (seeds: {len(found)}): exact match {_num(em)} ± {_num(std)}, "
            f"training {_num(cost, 3)} × the FLOPs of full; used by {', '.join(users)}"
        )
    return lines


def markdown(table: list[dict], notes: list[str] = ()) -> str:
    head = [
        "sample",
        "token rule",
        "seeds",
        "exact match",
        "Δ vs full (Welch p)",
        "FLOPs vs full",
        "token keep",
        "wrong tokens vs full",
        "reference",
        "reference training vs full",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in table:
        cells = [
            r["sample"],
            r["token"],
            str(r["seeds"]),
            f"{_num(r['em_mean'])} ± {_num(r['em_std'])}",
            _delta(r["delta_vs_full"], r["p_vs_full"]),
            _num(r["flops_vs_full"], 2),
            _num(r["token_keep_ratio"], 2),
            _num(r["wrong_tokens_vs_full"], 2),
            r["reference"] or "—",
            _num(r["reference_training_vs_full"], 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", *notes]).rstrip() + "\n"


def _delta(d: float, p: float) -> str:
    if math.isnan(d):
        return "—"
    if math.isnan(p):
        return f"{d:+.3f}"
    return f"{d:+.3f} (p = {p:.2g}{' *' if p < 0.05 else ''})"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the study's output directory (scripts/run_token_study.sh OUT)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    points = load(args.out)
    table = rows(points)
    full = next(runs for runs in points.values() if is_full(runs[0]))
    notes = reference_lines(table, mean(full, lambda r: r.summary.get("flops_estimate")))
    sys.stdout.write(markdown(table, notes))
    if args.json is not None:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
