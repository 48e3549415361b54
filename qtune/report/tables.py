"""The numbers of ``qtune-report``: one row per point, rendered as a Markdown table per task.

Compute is relative to the ``full`` point of the same task (see
``report_collect.reference_full``): mean FLOPs estimate over mean FLOPs of full, and the same
for train time, so 1.0 means "cost as much as training on everything". Each point's eval is
also compared with that ``full`` point's by Welch's t-test over seeds: a difference is called
larger than the seed noise when p < 0.05 (marked ``*``).
"""

from __future__ import annotations

import math

from qtune.report.collect import Point, reference_full

SHARE_KEYS = (
    ("trained_share_noisy", "noisy kept"),
    ("trained_share_duplicate", "dup. kept"),
    ("wrong_token_share", "wrong tok. kept"),
)


def point_rows(points: list[Point], metric: str | None = None) -> list[dict]:
    """Plain-number rows (also written to report.json) for one task's points; ``metric`` is
    the headline (Δ vs full, the Pareto plot's y axis), by default exact match or accuracy.
    Every other eval metric of the runs is under ``metrics`` (mean and std over seeds)."""
    rows = []
    for pt in points:
        ref = reference_full(pt, points)
        headline = metric or pt.metric
        mean, std = pt.eval_stats(headline)
        row = {
            "task": pt.task,
            "strategy": pt.strategy,
            "ratios": pt.label,
            "variant": pt.variant,
            "knobs": pt.knobs,
            "epochs": pt.epochs,
            "seeds": len(pt.runs),
            "seed_ids": pt.seeds(),
            "metric": headline,
            "eval_mean": mean,
            "eval_std": std,
            "metrics": {m: dict(zip(("mean", "std"), pt.eval_stats(m))) for m in pt.metric_names()},
            "eval_loss": pt.mean_std([float((r.summary.get("eval") or {}).get("loss", math.nan)) for r in pt.runs])[0],
            "flops": pt.mean("flops_estimate"),
            "train_time_s": pt.mean("train_time_s"),
            "rel_flops": math.nan,
            "rel_time": math.nan,
            "ref_epochs": None,
            "realised_keep_ratio": pt.mean("realised_keep_ratio"),
            "token_keep_ratio": _token_keep(pt),
            "budget": pt.knobs.get("budget"),
            "runs": [str(r.path) for r in pt.runs],
        }
        row["delta_vs_full"], row["p_vs_full"] = math.nan, math.nan
        if ref is not None:
            row["ref_epochs"] = ref.epochs
            if ref is not pt:
                row["delta_vs_full"], row["p_vs_full"] = welch(
                    [r.eval_value(headline) for r in pt.runs], [r.eval_value(headline) for r in ref.runs]
                )
            row["rel_flops"] = _ratio(row["flops"], ref.mean("flops_estimate"))
            row["rel_time"] = _ratio(row["train_time_s"], ref.mean("train_time_s"))
        for key, _ in SHARE_KEYS:
            if any(key in r.summary for r in pt.runs):
                row[key] = pt.mean(key)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """One task's table; share columns appear only when some run of the task records them."""
    shares = [(k, title) for k, title in SHARE_KEYS if any(k in r for r in rows)]
    token_keep = any(not math.isnan(r.get("token_keep_ratio", math.nan)) for r in rows)
    budgets = any(r.get("budget") is not None for r in rows)
    metric = rows[0]["metric"] if rows else "eval"
    others = sorted({m for r in rows for m in r.get("metrics", {})} - {metric})
    head = (
        [
            "strategy",
            "ratios",
            "epochs",
            "seeds",
            f"{metric} (mean ± std)",
            "Δ vs full",
            "FLOPs vs full",
            "train time vs full",
            "full ref. epochs",
            "realised keep",
        ]
        + (["token keep"] if token_keep else [])
        + [t for _, t in shares]
        + (["budget"] if budgets else [])
        + others
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["strategy"],
            r["ratios"] or "—",
            str(r["epochs"]),
            str(r["seeds"]),
            f"{_num(r['eval_mean'])} ± {_num(r['eval_std'])}",
            _delta(r),
            _num(r["rel_flops"]),
            _num(r["rel_time"]),
            str(r["ref_epochs"] if r["ref_epochs"] is not None else "—"),
            _num(r["realised_keep_ratio"]),
        ]
        cells += [_num(r.get("token_keep_ratio", math.nan))] if token_keep else []
        cells += [_num(r.get(k, math.nan)) for k, _ in shares]
        cells += [str(r["budget"]) if r.get("budget") is not None else "—"] if budgets else []
        cells += [_mean_std(r.get("metrics", {}).get(m)) for m in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean(a) - mean(b), two-sided p of Welch's unequal-variance t-test). p is nan with fewer
    than two values on a side, or when both sides have no spread at all."""
    from scipy import stats

    a = [x for x in a if not math.isnan(x)]
    b = [x for x in b if not math.isnan(x)]
    if not a or not b:
        return math.nan, math.nan
    delta = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2 or (max(a) == min(a) and max(b) == min(b)):
        return delta, math.nan
    return delta, float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _token_keep(pt: Point) -> float:
    """Mean measured token keep ratio; nan when no run measured one (runs from before it was
    recorded, or without response tokens)."""
    values = [r.summary.get("token_keep_ratio") for r in pt.runs]
    return pt.mean_std([math.nan if v is None else float(v) for v in values])[0]


def _delta(r: dict) -> str:
    d, p = r.get("delta_vs_full", math.nan), r.get("p_vs_full", math.nan)
    if math.isnan(d):
        return "—"
    if math.isnan(p):
        return f"{d:+.4f}"
    return f"{d:+.4f} (p={p:.2g}){' *' if p < 0.05 else ''}"


def _mean_std(stats: dict | None) -> str:
    return "—" if not stats else f"{_num(stats['mean'])} ± {_num(stats['std'])}"


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def _num(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"
