"""``qtune-report RUN_DIR... --out DIR``: tables and figures from finished runs.

Accepts run directories or any directory above them (every ``summary.json`` below is a run),
groups runs by task (the data group's name), averages seeds per point (strategy, knobs,
epochs), and writes ``report.md`` (one table per task, figures linked), ``report.json`` (the
same numbers, machine-readable), the PNG figures of ``report_plots`` and ``tokens.html``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from qtune.report.collect import find_runs, group_points
from qtune.report.plots import plane_run, plot_keep_ratio, plot_pareto, plot_plane
from qtune.report.tables import markdown_table, point_rows
from qtune.report.tokens import write_tokens_html


def build_report(paths: list[str | Path], out: str | Path, tokens_rows: int = 80, metric: str | None = None) -> dict:
    """Write the report into ``out``; returns {"rows": [...], "files": [...]} for callers.
    ``metric`` picks the headline eval metric (table's Δ column, Pareto y axis)."""
    out = Path(out)
    runs = find_runs(paths)
    if not runs:
        raise SystemExit(f"no summary.json found under {', '.join(map(str, paths))}")
    by_task = group_points(runs)
    if metric is not None:
        have = sorted({m for r in runs for m in r.eval_metrics})
        if metric not in have:
            raise SystemExit(f"--metric={metric}: no run has it; the runs' eval metrics: {', '.join(have) or 'none'}")
    out.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    runs_by_task = {task: [r for p in pts for r in p.runs] for task, pts in by_task.items()}
    md = [
        "# qtune report",
        "",
        f"{len(runs)} runs. Eval: mean ± sample std over seeds. Compute: mean FLOPs estimate "
        "and mean train time relative to `full` of the same task at the same epochs (or, for a "
        "run with more epochs than any full run, the full run with the most epochs below it: "
        "column *full ref. epochs*). *Δ vs full*: difference of the eval means to that full "
        "point, with the two-sided p of Welch's t-test over seeds; * marks p < 0.05, a "
        "difference larger than the seed noise. Kept shares: share of the noisy / duplicate "
        "items (and of wrong-answer tokens) of the training set trained, averaged over "
        "epochs.",
        "",
    ]
    all_rows, files = [], []
    for task, points in sorted(by_task.items()):
        rows = point_rows(points, metric if any(metric in r.eval_metrics for p in points for r in p.runs) else None)
        all_rows += rows
        md += [f"## {task}", "", markdown_table(rows), ""]
        figures = [plot_pareto(task, rows, out), plot_keep_ratio(task, points, out)]
        prun = plane_run(runs_by_task[task])
        if prun is not None:
            figures.append(plot_plane(task, prun, out))
        for fig in filter(None, figures):
            files.append(fig)
            md += [f"![{fig.stem}]({fig.name})", ""]
    tokens = write_tokens_html(runs_by_task, out, max_rows=tokens_rows)
    files.append(tokens)
    md += ["[Trained and masked tokens per sample](tokens.html)", ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    (out / "report.json").write_text(json.dumps({"rows": all_rows}, indent=1, default=_json_safe, allow_nan=True))
    return {"rows": all_rows, "files": [out / "report.md", out / "report.json", *files]}


def _json_safe(x):
    return None if isinstance(x, float) and math.isnan(x) else str(x)


def check_report_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every argument before any summary is read (argparse's error: exit 2, usage shown)."""
    missing = [p for p in args.runs if not Path(p).expanduser().exists()]
    if missing:
        ap.error(f"no such run directory: {', '.join(missing)}")
    if args.tokens_rows < 0:
        ap.error(f"--tokens-rows={args.tokens_rows} must be at least 0")
    if Path(args.out).expanduser().exists() and not Path(args.out).expanduser().is_dir():
        ap.error(f"--out={args.out} is a file; give a directory for report.md and the figures")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="qtune-report", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories or directories above them")
    ap.add_argument("--out", required=True, help="output directory for report.md and figures")
    ap.add_argument("--tokens-rows", type=int, default=80, help="rows per task in tokens.html")
    ap.add_argument(
        "--metric",
        default=None,
        help="headline eval metric (Δ vs full, Pareto y axis), e.g. token_f1 or "
        "qtune_embedded_chat/exact_match; default exact match, else accuracy",
    )
    args = ap.parse_args(argv)
    check_report_args(ap, args)
    result = build_report(args.runs, args.out, tokens_rows=args.tokens_rows, metric=args.metric)
    print(f"wrote {len(result['files'])} files to {args.out}: " + ", ".join(p.name for p in result["files"]))


if __name__ == "__main__":
    main()
