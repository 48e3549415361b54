"""Kill qtune-train runs at random moments, resume each, and check it ends as if never killed.

    python scripts/chaos.py --kills 20 --out outputs/chaos [--seed 0] [--json chaos.json]

A small grid on digits (full, random 0.5, InfoBatch, EL2N; step checkpoints every 4 steps).
Each point first runs uninterrupted. Then it runs again, in rounds of fresh directories, while
kills land at random moments, SIGKILL or SIGTERM at random: after each, the point is started
again (from its ``last.ckpt`` when there is one, as ``scripts/run_grid.py`` does) until it
finishes on its own; a round that finishes before its share of kills landed leaves the rest to
the next. A round survives when its final ``summary.json`` has the uninterrupted run's
evaluation, samples and tokens trained and per-epoch plan hashes. Prints a table and "kills survived / attempted"
(a kill counts as attempted when it reached a running process), and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMON = [
    "experiment=digits",
    "epochs=8",
    "batch_size=32",
    "checkpoint.every_n_train_steps=4",
    "trainer.enable_progress_bar=false",
    "kernels.backend=torch",
]
POINTS = {
    "full": ["strategy=full"],
    "random": ["strategy=random", "strategy.keep_ratio=0.5"],
    "infobatch": ["strategy=infobatch"],
    "el2n": ["strategy=el2n", "strategy.keep_ratio=0.5"],
}
SAME = ("eval", "samples_trained", "tokens_trained")


def command(run_dir: Path, overrides: list[str]) -> list[str]:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resume = [f"ckpt_path={ckpt}"] if ckpt.is_file() else []
    return [sys.executable, "-m", "qtune.train", *COMMON, *overrides, f"hydra.run.dir={run_dir}", *resume]


def start(run_dir: Path, overrides: list[str]) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "chaos.log", "a")
    env = dict(os.environ, WANDB_MODE="offline")
    return subprocess.Popen(command(run_dir, overrides), stdout=log, stderr=subprocess.STDOUT, env=env)


def fingerprint(summary: dict) -> dict:
    return {**{k: summary[k] for k in SAME}, "plans": [e["plan_hash"] for e in summary["epochs_detail"]]}


def uninterrupted(out: Path, name: str) -> dict:
    run_dir = out / "reference" / name
    if not (run_dir / "summary.json").is_file():
        if start(run_dir, POINTS[name]).wait() != 0:
            raise RuntimeError(f"{name}: the uninterrupted run failed; see {run_dir / 'chaos.log'}")
    return json.loads((run_dir / "summary.json").read_text())


def chaos_round(run_dir: Path, name: str, kills: int, rng: random.Random, window: tuple[float, float]) -> dict:
    """Run the point in `run_dir`, landing up to `kills` kills, until it finishes on its own."""
    record = {"dir": str(run_dir), "attempted": 0, "SIGKILL": 0, "SIGTERM": 0, "starts": 0, "exits": []}
    while True:
        proc = start(run_dir, POINTS[name])
        record["starts"] += 1
        if record["attempted"] < kills:
            try:
                proc.wait(timeout=rng.uniform(*window))
            except subprocess.TimeoutExpired:  # still running: the kill lands
                sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
                proc.send_signal(sig)
                record["attempted"] += 1
                record[sig.name] += 1
        record["exits"].append(proc.wait())
        if (run_dir / "summary.json").is_file():
            return record
        if record["starts"] > 3 * kills + 5:
            raise RuntimeError(f"{name}: no finished run after {record['starts']} starts; see {run_dir}")


def chaos_point(out: Path, name: str, kills: int, rng: random.Random, window: tuple[float, float], want: dict) -> dict:
    """Rounds of the point, each in a fresh directory, until `kills` kills have landed (a round
    that finishes before its kills land leaves the rest to the next); each round's result is
    compared with the uninterrupted run's."""
    rounds = []
    while sum(r["attempted"] for r in rounds) < kills or not rounds:
        left = kills - sum(r["attempted"] for r in rounds)
        record = chaos_round(out / "chaos" / name / f"round{len(rounds)}", name, left, rng, window)
        got = fingerprint(json.loads((Path(record["dir"]) / "summary.json").read_text()))
        record["same_as_uninterrupted"] = got == want
        rounds.append(record)
        if len(rounds) > 4 * kills + 4:
            raise RuntimeError(f"{name}: the kills do not land (runs end within {window[1]} s); lower --window")
    return {
        "point": name,
        "rounds": rounds,
        "attempted": sum(r["attempted"] for r in rounds),
        "survived": sum(r["attempted"] for r in rounds if r["same_as_uninterrupted"]),
        "same_as_uninterrupted": all(r["same_as_uninterrupted"] for r in rounds),
        "SIGKILL": sum(r["SIGKILL"] for r in rounds),
        "SIGTERM": sum(r["SIGTERM"] for r in rounds),
        "starts": sum(r["starts"] for r in rounds),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="kills to land in all (spread over the points)")
    ap.add_argument("--out", type=Path, default=Path("outputs/chaos"))
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill times and signals")
    ap.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS))
    ap.add_argument("--window", type=float, nargs=2, default=(2.0, 9.0), help="seconds after a start")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    share = [args.kills // len(args.points) + (i < args.kills % len(args.points)) for i in range(len(args.points))]
    rows, t0 = [], time.perf_counter()
    for name, kills in zip(args.points, share):
        want = fingerprint(uninterrupted(args.out, name))
        record = chaos_point(args.out, name, kills, rng, tuple(args.window), want)
        rows.append(record)
        print(
            f"{name:10s} kills {record['attempted']:3d} (SIGKILL {record['SIGKILL']}, SIGTERM {record['SIGTERM']})"
            f"  rounds {len(record['rounds'])}  starts {record['starts']:3d}  "
            f"same result: {'yes' if record['same_as_uninterrupted'] else 'NO'}",
            flush=True,
        )
    survived = sum(r["survived"] for r in rows)
    attempted = sum(r["attempted"] for r in rows)
    print(f"kills survived / attempted: {survived} / {attempted} ({time.perf_counter() - t0:.0f} s)")
    if args.json is not None:
        report = {"kills": args.kills, "seed": args.seed, "survived": survived, "attempted": attempted, "points": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if survived == attempted and all(r["same_as_uninterrupted"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
