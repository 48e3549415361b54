#!/usr/bin/env python
"""Run a grid of qtune-train jobs unattended: strategies × keep ratios × seeds × budgets.

Each point gets its own run directory with a deterministic name,
``OUT/<task>/<strategy>[-<ratio>]-<budget>-e<epochs>/seed<N>``, so an interrupted grid is
resumed by running the same command again: points whose ``summary.json`` exists are skipped,
and a point that stopped after writing ``checkpoints/last.ckpt`` continues from it.

Ratios are *keep* ratios (0.1 = 90 % pruned), translated through each strategy's declared
``ratio_keys`` (``PruningStrategy.ratio_keys``): a ratio r sets the first keep or prune knob to
r or 1 − r (``keep_ratio`` for random / el2n / ccs / rs2, ``prune_ratio`` for infobatch, ``p``
for seta); ``SxT`` sets the first two (qtuning's ``sample_ratio=S``, ``token_ratio=T``) and is
skipped by strategies with fewer. A strategy with no such knob (``full``) runs once per seed.
Directory tags read ``keep<r>``, or for a strategy with several knobs each knob's initial and
value (``s0.5xt0.7``). Budgets: ``same_epochs`` trains every point for the base epochs (a
pruned run does fewer steps); ``same_steps`` gives a pruned run round(epochs / r) epochs with r
the nominal keep ratio (the first knob's), so it does about as many steps as full; a number F
in (0, 1] runs the point under ``budget=F`` (F of the FLOPs of full at the base epochs, see the
README's compute budgets), ``full`` included, in directories named ``budgetF``.

``--tag NAME`` with ``--set KEY=VALUE ...`` names a variant of a strategy (its directory is
``<strategy>-<tag>-...``), e.g. ``--strategies random --tag static --set strategy.static=true``.
``--workers N`` splits the grid over N worker processes with cores/N threads each; a worker
runs its points one after another in its own Python process (``--in-process``: no interpreter
start-up or kernel build per point), writing each point's ``.hydra/config.yaml`` as
``qtune-train`` would.

    python scripts/run_grid.py --task digits --seeds 10 --strategies full random el2n \\
        --ratios 0.1 0.3 0.5 0.7 --budgets same_epochs same_steps --out outputs/grid --workers 2
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CONF = Path(__file__).resolve().parent.parent / "conf"
# task -> (its overrides, the yaml whose `epochs:` is the task's default)
TASKS = {"digits": (["experiment=digits"], CONF / "experiment" / "digits.yaml"), "sft": ([], CONF / "train.yaml")}
BUDGETS = ("same_epochs", "same_steps")


def default_epochs(yaml_path: Path) -> int:
    """The `epochs:` a task runs when the grid is not given --epochs, read from its config."""
    from omegaconf import OmegaConf

    return int(OmegaConf.load(yaml_path).epochs)


@dataclass
class GridPoint:
    run_dir: Path
    overrides: list[str]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "qtune.train", *self.overrides, f"hydra.run.dir={self.run_dir}"]


def ratio_knobs(strategy: str) -> dict[str, str]:
    """The knobs a grid ratio sets, option name -> keep | prune, from the strategy's contract."""
    from qtune.strategies import get_strategy_class
    from qtune.strategies.contract import swept_keys

    try:
        keys = get_strategy_class(strategy).ratio_keys
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    return {k: keys[k] for k in swept_keys(keys)}


def strategy_overrides(strategy: str, ratio: str | None) -> tuple[list[str], float, str]:
    """(overrides, nominal keep ratio, name tag) for one strategy at one grid ratio."""
    knobs = ratio_knobs(strategy)
    if not knobs:
        return [], 1.0, ""
    if ratio is None:
        raise ValueError(f"{strategy} needs --ratios")
    values = [float(x) for x in ratio.split("x")]
    if len(values) > len(knobs):
        raise ValueError(
            f"ratio {ratio} has {len(values)} parts but {strategy} has {len(knobs)} ratio knob(s): {list(knobs)}"
        )
    for r in values:
        if not 0.0 < r <= 1.0:
            raise ValueError(f"keep ratio {ratio} not in (0, 1]")
    ov = [f"strategy.{key}={r if knobs[key] == 'keep' else round(1.0 - r, 6)}" for key, r in zip(knobs, values)]
    if len(knobs) == 1:
        return ov, values[0], f"keep{values[0]:g}"
    return ov, values[0], "x".join(f"{key[0]}{r:g}" for key, r in zip(knobs, values))


def budget_overrides(budget: str, base: int, keep: float) -> tuple[int, list[str]]:
    """(epochs, extra overrides) of one grid budget: same_epochs, same_steps or a fraction."""
    if budget == "same_epochs":
        return base, []
    if budget == "same_steps":
        return max(1, round(base / keep)), []
    try:
        fraction = float(budget)
    except ValueError:
        fraction = math.nan
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"unknown budget {budget!r}; expected one of {BUDGETS} or a FLOPs fraction in (0, 1]")
    return base, [f"budget={fraction:g}"]


def budget_name(budget: str) -> str:
    return budget if budget in BUDGETS else f"budget{float(budget):g}"


def plan_grid(
    task: str,
    strategies: list[str],
    ratios: list[str],
    seeds: list[int],
    budgets: list[str],
    out: Path,
    epochs: int | None = None,
    extra: list[str] | None = None,
    tag: str = "",
) -> list[GridPoint]:
    """Every point of the grid, in a fixed order (full once per seed, whatever the budgets)."""
    task_ov, epochs_yaml = TASKS[task]
    base = int(epochs or default_epochs(epochs_yaml))
    points: list[GridPoint] = []
    for strategy in strategies:
        knobs = ratio_knobs(strategy)
        for ratio in ratios if knobs else [None]:
            if ratio is not None and len(ratio.split("x")) > len(knobs):
                continue  # e.g. an SxT ratio: a pair for strategies with two knobs only
            ov, keep, tag_ = strategy_overrides(strategy, ratio)
            variant = tag
            # full has no ratio: it runs once at the base epochs, and under each FLOPs budget
            runs_at = budgets if knobs else ["same_epochs", *(b for b in budgets if b not in BUDGETS)]
            for budget in runs_at:
                ep, budget_ov = budget_overrides(budget, base, keep)
                name = "-".join(x for x in (strategy, variant, tag_, budget_name(budget), f"e{ep}") if x)
                for seed in seeds:
                    points.append(
                        GridPoint(
                            out / task / name / f"seed{seed}",
                            [
                                *task_ov,
                                f"strategy={strategy}",
                                *ov,
                                f"epochs={ep}",
                                *budget_ov,
                                f"seed={seed}",
                                "trainer.enable_progress_bar=false",
                                *(extra or []),
                            ],
                        )
                    )
    return points


def subprocess_runner(point: GridPoint) -> int:
    """Run one point, its output appended to ``<run_dir>/grid.log``."""
    point.run_dir.mkdir(parents=True, exist_ok=True)
    with open(point.run_dir / "grid.log", "a") as log:
        return subprocess.call(point.command(), stdout=log, stderr=subprocess.STDOUT)


def in_process_runner(point: GridPoint) -> int:
    """Run one point in this process (Hydra's compose API), output appended to ``grid.log``;
    ``.hydra/config.yaml`` is written as ``qtune-train`` writes it, for ``qtune-report``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from qtune.train import run

    point.run_dir.mkdir(parents=True, exist_ok=True)
    with open(point.run_dir / "grid.log", "a") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            GlobalHydra.instance().clear()
            with initialize_config_module(config_module="qtune.conf", version_base="1.3"):
                cfg = compose("train", overrides=[*point.overrides, f"run_dir={point.run_dir}"])
            (point.run_dir / ".hydra").mkdir(exist_ok=True)
            OmegaConf.save(cfg, point.run_dir / ".hydra" / "config.yaml")
            run(cfg)
            return 0
        except Exception:  # a failed point is logged and reported, the grid goes on
            traceback.print_exc()
            return 1


def validate_points(points: list[GridPoint]) -> None:
    """Compose and validate every point before the first one runs, so a typo in ``--set`` or
    a bad ratio is refused in seconds, not after hours of grid. Points that differ only in
    their seed are checked once."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from qtune.train import validate

    seen: set[tuple[str, ...]] = set()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="qtune.conf", version_base="1.3"):
        for point in points:
            key = tuple(o for o in point.overrides if not o.startswith("seed="))
            if key in seen:
                continue
            seen.add(key)
            try:
                validate(compose("train", overrides=[*point.overrides, f"run_dir={point.run_dir}"]))
            except Exception as exc:
                raise SystemExit(f"grid point {point.run_dir}: {type(exc).__name__}: {exc}") from None
    GlobalHydra.instance().clear()


def _without_workers(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out


def run_workers(argv: list[str], workers: int) -> int:
    """Start ``workers`` copies of this script on disjoint shards of the grid, in-process,
    with the cores split between them; the exit status is the worst of theirs."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, *argv, "--shard", f"{i}/{workers}", "--in-process", "--threads", str(threads)],
            env=env,
        )
        for i in range(workers)
    ]
    return max(p.wait() for p in procs)


def run_grid(
    points: list[GridPoint],
    runner: Callable[[GridPoint], int] = subprocess_runner,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, list[Path]]:
    """Run the unfinished points one after another; a failed point is reported, not fatal."""
    done: dict[str, list[Path]] = {"skipped": [], "ran": [], "failed": [], "interrupted": [], "planned": []}
    for i, point in enumerate(points, 1):
        if (point.run_dir / "summary.json").exists():
            done["skipped"].append(point.run_dir)
            continue
        ckpt = point.run_dir / "checkpoints" / "last.ckpt"
        if ckpt.exists() and not any(o.startswith("ckpt_path=") for o in point.overrides):
            point = GridPoint(point.run_dir, [*point.overrides, f"ckpt_path={ckpt}"])
        log(f"[{i}/{len(points)}] {' '.join(point.command()[1:])}")
        if dry_run:
            done["planned"].append(point.run_dir)
            continue
        rc = runner(point)
        if rc == 0:
            done["ran"].append(point.run_dir)
        elif rc > 128 or rc < 0:  # a signal: qtune-train exits 128 + its number after saving
            done["interrupted"].append(point.run_dir)  # last.ckpt; a killed child returns -signal
            log(f"  interrupted (signal {rc - 128 if rc > 0 else -rc}); the next call resumes it from last.ckpt")
        else:
            done["failed"].append(point.run_dir)
            log(f"  failed (exit {rc}); see {point.run_dir / 'grid.log'}")
    log(", ".join(f"{k}: {len(v)}" for k, v in done.items()))
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), required=True)
    ap.add_argument("--strategies", nargs="+", default=["full", "random"])
    ap.add_argument("--ratios", nargs="+", default=["0.5"], help="keep ratios (qtuning: S or SxT)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument(
        "--budgets",
        nargs="+",
        default=["same_epochs"],
        help="same_epochs, same_steps, or FLOPs fractions F in (0, 1] (budget=F)",
    )
    ap.add_argument("--epochs", type=int, default=None, help="base epochs (default: the task's)")
    ap.add_argument("--out", type=Path, required=True, help="grid output root")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra qtune-train overrides for every point (e.g. export_plan=true)",
    )
    ap.add_argument("--tag", default="", help="variant name added to the strategy's directory")
    ap.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    ap.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run the points in this Python process instead of one qtune-train each",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (in-process)")
    ap.add_argument("--shard", default=None, metavar="I/N", help="run only points I, I+N, ...")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    try:
        points = plan_grid(
            args.task,
            args.strategies,
            args.ratios,
            list(range(args.seeds)),
            args.budgets,
            args.out,
            args.epochs,
            args.set,
            args.tag,
        )
    except ValueError as exc:
        ap.error(str(exc))
    if args.shard is None:  # the parent checks the whole grid once; shards were checked by it
        validate_points(points)
    if args.workers > 1 and args.shard is None and not args.dry_run:
        return run_workers(_without_workers(argv), args.workers)
    if args.shard:
        i, n = (int(x) for x in args.shard.split("/"))
        points = points[i::n]
    runner = subprocess_runner
    if args.in_process:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        runner = in_process_runner
    done = run_grid(points, runner=runner, dry_run=args.dry_run)
    return 1 if done["failed"] or done["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
