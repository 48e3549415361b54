"""The figures of ``qtune-report`` (matplotlib, Agg backend: no display needed).

* ``pareto_<task>.png``: eval metric against FLOPs relative to full, one line per strategy
  (its points in order of compute, seed std as error bars; points trained for more epochs
  than their full reference, the same-steps budget, get their own dashed line), the Pareto
  front (no other point is both cheaper and better) drawn as a black step line, points ringed.
* ``keep_ratio_<task>.png``: realised keep ratio per epoch, one line per point.
* ``plane_<task>.png``: the Q-Tuning error-uncertainty plane of one run's final scores (PPL on
  a log axis against entropy), coloured by item kind. The dashed lines are the quantile
  thresholds of Q-Tuning's split, P_lo/P_hi = PPL quantiles at α and 1−α and E_lo/E_hi = the
  entropy quantiles at α and 1−α, computed over the whole final score store with α the run's
  last-epoch mean α (a qtuning run) or 0.25 otherwise. Training draws these per micro-batch,
  so the lines show where the quadrants fall, not any one batch's exact cut.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .report_collect import Point, Run  # noqa: E402

KIND_COLOURS = {"clean": "tab:blue", "noisy": "tab:red", "duplicate": "tab:orange"}
DEFAULT_ALPHA = 0.25


def slug(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)


def pareto_front(xy: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower-or-equal x and higher-or-equal y,
    strictly better in one), sorted by x."""
    idx = [i for i, (x, y) in enumerate(xy) if not (math.isnan(x) or math.isnan(y))]
    front = [i for i in idx if not any(
        xy[j][0] <= xy[i][0] and xy[j][1] >= xy[i][1] and xy[j] != xy[i] for j in idx)]
    return sorted(front, key=lambda i: xy[i][0])


def plot_pareto(task: str, rows: list[dict], out: Path) -> Path | None:
    pts = [r for r in rows if not math.isnan(r["rel_flops"]) and not math.isnan(r["eval_mean"])]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    refs = {r["ref_epochs"] for r in pts}
    lines: dict[tuple, list[dict]] = {}
    for r in pts:  # one line per strategy, reference and budget (same epochs or more epochs)
        key = (r["strategy"], r["ref_epochs"], r["epochs"] != r["ref_epochs"])
        lines.setdefault(key, []).append(r)
    colours = {st: f"C{i % 10}" for i, st in enumerate(sorted({r["strategy"] for r in pts}))}
    for (strat, ref, longer), rs in sorted(lines.items()):
        rs.sort(key=lambda r: r["rel_flops"])
        label = (strat + (f" vs full@{ref} ep" if len(refs) > 1 else "")
                 + (" (more epochs)" if longer else ""))
        ax.errorbar([r["rel_flops"] for r in rs], [r["eval_mean"] for r in rs],
                    yerr=[r["eval_std"] for r in rs], marker="s" if longer else "o", capsize=3,
                    color=colours[strat], ls="--" if longer else "-", label=label)
    front = pareto_front([(r["rel_flops"], r["eval_mean"]) for r in pts])
    fx, fy = [pts[i]["rel_flops"] for i in front], [pts[i]["eval_mean"] for i in front]
    ax.step(fx, fy, where="post", color="black", lw=1, alpha=0.7, label="Pareto front")
    ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", zorder=5)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    metric = pts[0]["metric"].replace("_", " ")
    ax.set(title=f"{task}: {metric} vs compute (mean ± std over seeds)",
           xlabel="training FLOPs relative to full (estimate, same task)",
           ylabel=f"eval {metric} (fraction)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out / f"pareto_{slug(task)}.png")


def plot_keep_ratio(task: str, points: list[Point], out: Path) -> Path | None:
    series = [(f"{p.strategy} {p.label} ({p.epochs} ep)".replace("  ", " "), p.keep_per_epoch())
              for p in points]
    series = [(name, ys) for name, ys in series if ys]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5))
    for name, ys in series:
        ax.plot(range(len(ys)), ys, marker=".", label=name)
    ax.set(title=f"{task}: realised keep ratio per epoch (mean over seeds)", xlabel="epoch",
           ylabel="samples trained / training set size", ylim=(0, 1.05))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out / f"keep_ratio_{slug(task)}.png")


def plane_run(runs: list[Run]) -> Run | None:
    """The run whose scores draw the plane: the first qtuning run, else full, else any."""
    with_scores = [r for r in runs if (r.path / "scores.npz").is_file()]
    for want in ("qtuning", "full"):
        for r in with_scores:
            if r.strategy == want:
                return r
    return with_scores[0] if with_scores else None


def plot_plane(task: str, run: Run, out: Path) -> Path | None:
    z = np.load(run.path / "scores.npz", allow_pickle=False)
    ppl, ent = z["ppl"].astype(float), z["entropy"].astype(float)
    ok = np.isfinite(ppl) & np.isfinite(ent)
    if not ok.any():
        return None
    kinds = z["kind"].astype(str) if "kind" in z.files else np.full(len(ppl), "item")
    detail = run.summary.get("epochs_detail") or [{}]
    alpha = float(detail[-1].get("alpha", DEFAULT_ALPHA))
    p_lo, p_hi = np.quantile(ppl[ok], [alpha, 1 - alpha])
    e_lo, e_hi = np.quantile(ent[ok], [alpha, 1 - alpha])
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for kind in sorted(set(kinds[ok])):
        m = ok & (kinds == kind)
        ax.scatter(ppl[m], ent[m], s=8, alpha=0.6, color=KIND_COLOURS.get(kind, "tab:gray"),
                   label=f"{kind} ({int(m.sum())})")
    for x, name, ha in ((p_lo, "P_lo ", "right"), (p_hi, " P_hi", "left")):
        ax.axvline(x, color="black", ls="--", lw=0.8)
        ax.annotate(name, (x, 0.99), xycoords=("data", "axes fraction"), fontsize=8, va="top", ha=ha)
    for y, name, va in ((e_lo, "E_lo", "top"), (e_hi, "E_hi", "bottom")):
        ax.axhline(y, color="dimgray", ls="--", lw=0.8)
        ax.annotate(name, (0.99, y), xycoords=("axes fraction", "data"), fontsize=8, ha="right", va=va)
    if (ppl[ok] > 0).all():
        ax.set_xscale("log")
    ax.text(0.99, 0.02, "Q2: PPL>P_hi, ent≤E_lo   Q4: PPL≤P_lo, ent>E_hi", transform=ax.transAxes,
            ha="right", fontsize=7)
    ax.set(title=f"{task}: error-uncertainty plane, {run.strategy} seed "
                 f"{run.summary.get('seed')} (thresholds at α={alpha:.2f})",
           xlabel="perplexity exp(mean response-token loss), log scale",
           ylabel="mean response-token entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend(title="item kind", fontsize=8)
    return _save(fig, out / f"plane_{slug(task)}.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
