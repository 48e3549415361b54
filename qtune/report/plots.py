"""The figures of ``qtune-report`` (matplotlib, Agg backend: no display needed).

* ``pareto_<task>.png``: eval metric against FLOPs relative to full, one panel per full
  reference (e.g. 3 and 9 epochs), one line per strategy variant (its points in order of
  compute, seed std as error bars; points trained for more epochs than their full reference,
  the same-steps budget, get their own dashed line), the Pareto front (no other point is both
  cheaper and better) drawn as a black step line, points ringed.
* ``keep_ratio_<task>.png``: realised keep ratio per epoch, a panel per strategy variant.
* ``plane_<task>.png``: the Q-Tuning error-uncertainty plane of one run's final scores (PPL on
  a log axis against entropy), coloured by item kind. The dashed lines are the quantile
  thresholds of Q-Tuning's split, P_lo/P_hi = PPL quantiles at α and 1−α and E_lo/E_hi = the
  entropy quantiles at α and 1−α, computed over the whole final statistics store with α the run's
  last-epoch mean α (a run that records one, Q-Tuning's) or 0.25 otherwise. Training draws these per micro-batch,
  so the lines show where the quadrants fall, not any one batch's exact cut. A kind with more
  than ``MAX_PLANE_POINTS`` samples is drawn as a fixed-seed uniform sample of that many (the
  thresholds still use every sample).
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

from qtune.report.collect import Point, Run, strategy_class  # noqa: E402

KIND_COLOURS = {"clean": "tab:blue", "noisy": "tab:red", "duplicate": "tab:orange"}
DEFAULT_ALPHA = 0.25
MAX_PLANE_POINTS = 20_000  # per item kind; the legend keeps the full counts


def slug(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)


def pareto_front(xy: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower-or-equal x and higher-or-equal y,
    strictly better in one), sorted by x."""
    idx = [i for i, (x, y) in enumerate(xy) if not (math.isnan(x) or math.isnan(y))]
    front = [i for i in idx if not any(xy[j][0] <= xy[i][0] and xy[j][1] >= xy[i][1] and xy[j] != xy[i] for j in idx)]
    return sorted(front, key=lambda i: xy[i][0])


def _line_name(r: dict) -> str:
    return r["strategy"] + (f" [{r['variant']}]" if r.get("variant") else "")


def plot_pareto(task: str, rows: list[dict], out: Path) -> Path | None:
    """One panel per reference epoch count (the full run compute is measured against)."""
    pts = [r for r in rows if not math.isnan(r["rel_flops"]) and not math.isnan(r["eval_mean"])]
    if not pts:
        return None
    refs = sorted({r["ref_epochs"] for r in pts})
    fig, axes = plt.subplots(1, len(refs), figsize=(7.5 * len(refs), 5.5), squeeze=False)
    names = sorted({_line_name(r) for r in pts})
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]  # 18 distinct
    colours = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    metric = pts[0]["metric"].replace("_", " ")
    for ax, ref in zip(axes[0], refs):
        panel = [r for r in pts if r["ref_epochs"] == ref]
        lines: dict[tuple, list[dict]] = {}
        for r in panel:  # one line per strategy variant and budget (same epochs or more)
            lines.setdefault((_line_name(r), r["epochs"] != ref), []).append(r)
        for (name, longer), rs in sorted(lines.items()):
            rs.sort(key=lambda r: r["rel_flops"])
            ax.errorbar(
                [r["rel_flops"] for r in rs],
                [r["eval_mean"] for r in rs],
                yerr=[r["eval_std"] for r in rs],
                marker="s" if longer else "o",
                capsize=3,
                color=colours[name],
                ls="--" if longer else "-",
                label=name + (" (more epochs)" if longer else ""),
            )
        front = pareto_front([(r["rel_flops"], r["eval_mean"]) for r in panel])
        fx, fy = [panel[i]["rel_flops"] for i in front], [panel[i]["eval_mean"] for i in front]
        ax.step(fx, fy, where="post", color="black", lw=1, alpha=0.7, label="Pareto front")
        ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", zorder=5)
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set(
            title=f"{task}: {metric} vs compute, full = {ref} epochs (mean ± std over seeds)",
            xlabel=f"training FLOPs relative to full at {ref} epochs (estimate)",
            ylabel=f"eval {metric}",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _save(fig, out / f"pareto_{slug(task)}.png")


def plot_keep_ratio(task: str, points: list[Point], out: Path) -> Path | None:
    """Small multiples: one panel per strategy variant, one line per ratio setting and epochs."""
    panels: dict[str, list[tuple[str, list[float]]]] = {}
    for p in points:
        ys = p.keep_per_epoch()
        if ys:
            name = p.strategy + (f" [{p.variant}]" if p.variant else "")
            ratios = ", ".join(x for x in p.label.split(", ") if x.split("=")[0] in p.ratio_keys)
            panels.setdefault(name, []).append((f"{ratios or 'all'} ({p.epochs} ep)", ys))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, series) in zip(axes.flat, sorted(panels.items())):
        for label, ys in series:
            ax.plot(range(len(ys)), ys, marker="." if len(ys) <= 40 else None, label=label)
        ax.set(title=name, xlabel="epoch", ylabel="samples trained / set size", ylim=(0, 1.05))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{task}: realised keep ratio per epoch (mean over seeds)")
    return _save(fig, out / f"keep_ratio_{slug(task)}.png")


def plane_run(runs: list[Run]) -> Run | None:
    """The run whose scores draw the plane: the one its strategy ranks first
    (``PruningStrategy.plane_rank``: Q-Tuning with the paper's policy), else a full-data run,
    else any."""
    with_scores = [r for r in runs if (r.path / "scores.npz").is_file()]

    def rank(r: Run) -> tuple[int, int]:
        cls = strategy_class(r.strategy)
        claimed = cls.plane_rank(r.strategy_cfg)
        return (0, claimed) if claimed is not None else (1, 0 if cls.full_data else 1)

    return min(with_scores, key=rank) if with_scores else None


def plane_points(kinds: np.ndarray | None, ok: np.ndarray, max_per_kind: int = MAX_PLANE_POINTS) -> dict[str, tuple]:
    """kind -> (row indices to draw, rows of that kind): every row of a kind with at most
    ``max_per_kind`` rows, else a uniform sample of that many (fixed seed, so the figure is
    the same each time). Why: drawing 1e7 points took 93 s and 1.3 GB; a per-kind cap keeps a
    rare kind (the noisy items) whole next to a subsampled common one."""
    groups: dict[str, np.ndarray] = {}
    if kinds is None:
        groups["item"] = np.flatnonzero(ok)
    else:
        rest = ok.copy()
        while rest.any():  # a few kinds: one comparison pass each, no sort or copy of N strings
            kind = kinds[np.argmax(rest)]
            same = (kinds == kind) & rest
            groups[str(kind)] = np.flatnonzero(same)
            rest &= ~same
    out = {}
    for kind in sorted(groups):
        idx = groups[kind]
        if idx.size > max_per_kind:
            pick = np.random.default_rng(0).choice(idx.size, size=max_per_kind, replace=False)
            out[kind] = (idx[np.sort(pick)], idx.size)
        else:
            out[kind] = (idx, idx.size)
    return out


def plot_plane(task: str, run: Run, out: Path, max_per_kind: int = MAX_PLANE_POINTS) -> Path | None:
    z = np.load(run.path / "scores.npz", allow_pickle=False)
    ppl, ent = z["ppl"].astype(float), z["entropy"].astype(float)
    ok = np.isfinite(ppl) & np.isfinite(ent)
    if not ok.any():
        return None
    kinds = z["kind"].astype(str, copy=False) if "kind" in z.files else None
    detail = run.summary.get("epochs_detail") or [{}]
    alpha = float(detail[-1].get("alpha", DEFAULT_ALPHA))
    p_lo, p_hi = np.quantile(ppl[ok], [alpha, 1 - alpha])
    e_lo, e_hi = np.quantile(ent[ok], [alpha, 1 - alpha])
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    sampled = False
    for kind, (idx, total) in plane_points(kinds, ok, max_per_kind).items():
        sampled |= idx.size < total
        label = f"{kind} ({total})" if idx.size == total else f"{kind} ({total}, {idx.size} drawn)"
        ax.scatter(ppl[idx], ent[idx], s=8, alpha=0.6, color=KIND_COLOURS.get(kind, "tab:gray"), label=label)
    for x, name, ha in ((p_lo, "P_lo ", "right"), (p_hi, " P_hi", "left")):
        ax.axvline(x, color="black", ls="--", lw=0.8)
        ax.annotate(name, (x, 0.99), xycoords=("data", "axes fraction"), fontsize=8, va="top", ha=ha)
    for y, name, va in ((e_lo, "E_lo", "top"), (e_hi, "E_hi", "bottom")):
        ax.axhline(y, color="dimgray", ls="--", lw=0.8)
        ax.annotate(name, (0.99, y), xycoords=("axes fraction", "data"), fontsize=8, ha="right", va=va)
    if (ppl[ok] > 0).all():
        ax.set_xscale("log")
    ax.text(
        0.99, 0.02, "Q2: PPL>P_hi, ent≤E_lo   Q4: PPL≤P_lo, ent>E_hi", transform=ax.transAxes, ha="right", fontsize=7
    )
    ax.set(
        title=f"{task}: error-uncertainty plane, {run.strategy} seed "
        f"{run.summary.get('seed')} (thresholds at α={alpha:.2f}"
        f"{', a uniform sample of each large kind' if sampled else ''})",
        xlabel="perplexity exp(mean response-token loss), log scale",
        ylabel="mean response-token entropy (nats)",
    )
    ax.grid(alpha=0.3)
    ax.legend(title="item kind", fontsize=8)
    return _save(fig, out / f"plane_{slug(task)}.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
