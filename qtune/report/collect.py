"""Reading finished runs for ``qtune-report``: run directories in, grouped records out.

A run is a directory with a ``summary.json``; its ``.hydra/config.yaml`` (when present) gives
the task (the data group's name) and the strategy's knobs, and its ``metrics.csv`` the per-epoch
log. Runs are grouped into *points* (same task, strategy, strategy knobs and epoch count) whose
seeds are averaged, because a pruning method is judged by its mean over seeds, not one run.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def strategy_class(strategy: str):
    """The registered class of a run's strategy; the base class (no claims) for one not
    installed here. The report asks it what it plots and how its options read."""
    from qtune.strategies import PruningStrategy, get_strategy_class

    try:
        return get_strategy_class(strategy)
    except KeyError:
        return PruningStrategy


def ratio_keys(strategy: str) -> frozenset[str]:
    """The ratio knobs a strategy declares (``PruningStrategy.ratio_keys``): always shown in a
    label, never what makes a variant. A strategy not installed here (a third-party run read
    elsewhere) gets every installed strategy's ratio knobs, the best guess without its class."""
    from qtune.strategies import get_strategy_class, registered_names

    try:
        return frozenset(get_strategy_class(strategy).ratio_keys)
    except KeyError:
        return frozenset(k for n in registered_names() for k in get_strategy_class(n).ratio_keys)


@dataclass
class Run:
    path: Path
    summary: dict
    config: dict
    metrics: list[dict] = field(default_factory=list)

    @property
    def task(self) -> str:
        return str((self.config.get("data") or {}).get("name") or self.summary.get("task", "?"))

    @property
    def strategy(self) -> str:
        return str(self.summary.get("strategy") or self.strategy_cfg.get("name", "?"))

    @property
    def strategy_cfg(self) -> dict:
        return dict(self.config.get("strategy") or {})

    @property
    def epochs(self) -> int:
        return int(self.summary.get("epochs", 0))

    @property
    def metric(self) -> str:
        """The headline eval metric: exact match for generation tasks, else accuracy."""
        ev = self.summary.get("eval") or {}
        return "exact_match" if "exact_match" in ev else "accuracy"

    @property
    def eval_metrics(self) -> dict[str, float]:
        """Every eval number of the run (harness results as ``task/metric``)."""
        from qtune.eval.metrics import flatten_eval

        return flatten_eval(self.summary.get("eval"))

    def eval_value(self, metric: str | None = None) -> float:
        return self.eval_metrics.get(metric or self.metric, math.nan)

    def epoch_keep_ratios(self) -> list[float]:
        """Realised keep ratio per epoch: the summary's record, else metrics.csv's prune rows."""
        detail = self.summary.get("epochs_detail") or []
        if detail:
            return [float(d.get("realised_keep_ratio", math.nan)) for d in detail]
        return [
            float(r["prune/realised_keep_ratio"])
            for r in self.metrics
            if r.get("prune/realised_keep_ratio") not in (None, "")
        ]


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every run at or below the given paths (a run dir or any parent), each once, sorted."""
    found: dict[Path, Run] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run directory")
        files = [p / "summary.json"] if (p / "summary.json").is_file() else sorted(p.rglob("summary.json"))
        for f in files:
            found.setdefault(f.parent.resolve(), load_run(f.parent))
    return [found[k] for k in sorted(found)]


def summary_problem(summary: Any) -> str | None:
    """What makes `summary` unusable as a run's record (None when it is one): the keys every
    ``summary.json`` qtune writes has, with their types."""
    if not isinstance(summary, dict):
        return f"a JSON object expected, got {type(summary).__name__}"
    if not isinstance(summary.get("strategy"), str) or not summary["strategy"]:
        return "no 'strategy' name"
    epochs = summary.get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        return f"'epochs' must be a whole number of at least 1, got {epochs!r}"
    for key, kind in (("eval", dict), ("epochs_detail", list)):
        if key in summary and not isinstance(summary[key], kind):
            return f"'{key}' must be a JSON {'object' if kind is dict else 'array'}, got {type(summary[key]).__name__}"
    return None


def load_run(run_dir: Path) -> Run:
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); move the run away or rerun it") from None
    problem = summary_problem(summary)
    if problem:
        raise ValueError(f"{path}: not a qtune summary ({problem}); move the run away or rerun it")
    config: dict = {}
    cfg_file = next(
        (f for f in (run_dir / ".hydra" / "config.yaml", run_dir / "config.yaml") if f.is_file()), None
    )  # Hydra's record, else the one qtune-train writes
    if cfg_file is not None:
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False)
    metrics: list[dict] = []
    if (run_dir / "metrics.csv").is_file():
        with open(run_dir / "metrics.csv", newline="") as fh:
            metrics = list(csv.DictReader(fh))
    return Run(run_dir, summary, config, metrics)


@dataclass
class Point:
    """The runs of one (task, strategy, knobs, epochs): one table row, one plotted point."""

    task: str
    strategy: str
    knobs: dict
    epochs: int
    runs: list[Run]
    label: str = ""
    variant: str = ""  # the non-ratio knobs that set this point apart within its strategy

    @property
    def ratio_keys(self) -> frozenset[str]:
        return ratio_keys(self.strategy)

    @property
    def metric(self) -> str:
        return self.runs[0].metric

    def mean_std(self, values: list[float]) -> tuple[float, float]:
        """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
        vals = [v for v in values if not math.isnan(v)]
        if not vals:
            return math.nan, math.nan
        m = sum(vals) / len(vals)
        if len(vals) < 2:
            return m, 0.0
        return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))

    def mean(self, key: str) -> float:
        return self.mean_std([float(r.summary.get(key, math.nan)) for r in self.runs])[0]

    def eval_stats(self, metric: str | None = None) -> tuple[float, float]:
        return self.mean_std([r.eval_value(metric) for r in self.runs])

    def metric_names(self) -> list[str]:
        return sorted({k for r in self.runs for k in r.eval_metrics})

    def seeds(self) -> list[int]:
        return sorted({int(r.summary.get("seed", -1)) for r in self.runs})

    def keep_per_epoch(self) -> list[float]:
        rows = [r.epoch_keep_ratios() for r in self.runs]
        n = max((len(x) for x in rows), default=0)
        return [self.mean_std([x[e] for x in rows if e < len(x)])[0] for e in range(n)]


def group_points(runs: list[Run]) -> dict[str, list[Point]]:
    """Points per task, sorted by strategy then knobs then epochs; each gets a display label
    naming its ratio knobs plus whichever other knobs differ between points of its strategy."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        knobs = {k: v for k, v in r.strategy_cfg.items() if k != "name"}
        data = dict(r.config.get("data") or {})  # e.g. data.drop_kinds: the clean-only oracle
        knobs.update({f"data.{k}": v for k, v in data.items() if k not in ("name", "seed")})
        if r.summary.get("budget") is not None:  # budget=F: its own point, on the FLOPs axis
            knobs["budget"] = r.summary["budget"]
        key = (r.task, r.strategy, json.dumps(knobs, sort_keys=True, default=str), r.epochs)
        groups.setdefault(key, []).append(r)
    by_task: dict[str, list[Point]] = {}
    for (task, strat, knobs, epochs), rs in sorted(groups.items()):
        by_task.setdefault(task, []).append(Point(task, strat, json.loads(knobs), epochs, rs))
    for points in by_task.values():
        for pt in points:
            same = [q for q in points if q.strategy == pt.strategy]
            varying = {k for q in same for k in set(q.knobs) | set(pt.knobs) if q.knobs.get(k) != pt.knobs.get(k)}
            # a token rule is always named: a composed point never reads as its sample strategy alone
            shown = [k for k in pt.knobs if k in pt.ratio_keys or k in varying or k == "token"]
            fmt = strategy_class(pt.strategy).format_option
            pt.label = ", ".join(f"{k}={fmt(k, pt.knobs[k]) or _fmt(pt.knobs[k])}" for k in shown)
            pt.variant = ", ".join(
                f"{k}={fmt(k, pt.knobs[k]) or _fmt(pt.knobs[k])}" for k in shown if k not in pt.ratio_keys
            )
    return by_task


def reference_full(point: Point, points: list[Point]) -> Point | None:
    """The ``full`` point that compute is measured against: same task and epochs; else (a
    same-steps run with more epochs than the baseline) the ``full`` point with the most epochs
    not above this point's; else None."""

    def norm(v: Any) -> Any:  # a key absent from older configs means its empty default
        return None if v in ([], (), None, "") else v

    def same_data(q: Point) -> bool:
        keys = {k for k in set(q.knobs) | set(point.knobs) if k.startswith("data.")}
        return all(norm(q.knobs.get(k)) == norm(point.knobs.get(k)) for k in keys)

    fulls = [q for q in points if strategy_class(q.strategy).full_data and q.epochs <= point.epochs]
    # the matching full run trains its epochs unbudgeted (a budget is a fraction of that run)
    fulls = [q for q in fulls if q.knobs.get("budget") is None] or fulls
    fulls = [q for q in fulls if not q.knobs.get("token")] or fulls  # full data with every token
    fulls = [q for q in fulls if same_data(q)] or fulls  # the baseline trains the same data
    exact = [q for q in fulls if q.epochs == point.epochs]
    if exact:
        return exact[0]
    return max(fulls, key=lambda q: q.epochs) if fulls else None


def _fmt(v: Any) -> str:
    """A knob's value for labels, when its strategy has no format of its own."""
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
