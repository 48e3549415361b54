"""The run's ``metrics.csv`` across a resume and across spawned processes.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when its writer is created, so a
resumed run would lose every row logged before the interruption. Here the rows written before
the checkpoint are kept and the rows after it are dropped, because the resumed run trains
those steps again and logs them anew. The writer is created up front, so that a writer created
late (in the launching process of a spawned run, to log the final metrics) cannot delete what
the ranks wrote; `adopt_csv_header` brings such a writer up to date with the file first.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only


def _is_after(row: dict, step: int, mid_epoch: bool) -> bool:
    """Whether `row` was logged after a checkpoint at global step `step`. A training row at
    step s comes from the batch that makes optimiser step s + 1; the epoch-end rows (eval,
    prune) at step s precede an end-of-epoch checkpoint at s, but not a mid-epoch one."""
    if not row.get("step"):
        return False
    s = float(row["step"])
    if s != step:
        return s > step
    return mid_epoch or any(k.startswith("train/") and v for k, v in row.items())


def _rows_before(path: Path, step: int, mid_epoch: bool) -> tuple[list[str], list[dict]]:
    """Header and the rows written before the checkpoint, in file order; `final/` rows are
    left out (every run logs them again when it ends)."""
    rows = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        for r in reader:
            if _is_after(r, step, mid_epoch):
                break
            if not any(k.startswith("final/") and v for k, v in r.items()):
                rows.append(r)
        return list(reader.fieldnames or []), rows


def csv_logger(run_dir: Path, resume: tuple[int, bool] | None = None) -> CSVLogger:
    """A CSVLogger writing ``run_dir/metrics.csv``. `resume` = (the checkpoint's global step,
    whether it was taken mid-epoch): the rows logged before it stay in the file."""
    path = Path(run_dir) / "metrics.csv"
    header, rows = [], []
    if resume is not None and path.is_file() and rank_zero_only.rank == 0:
        header, rows = _rows_before(path, *resume)
    logger = CSVLogger(save_dir=str(run_dir), name="", version="")
    if rank_zero_only.rank == 0:
        writer = logger.experiment  # created now: creating it deletes an existing file
        if header:
            with path.open("w", newline="") as fh:
                out = csv.DictWriter(fh, fieldnames=header)
                out.writeheader()
                out.writerows(rows)
            writer.metrics_keys = sorted(header)  # later rows append; new keys rewrite
    return logger


def adopt_csv_header(logger) -> None:
    """Before this process logs to a metrics.csv that other processes (spawned ranks) wrote:
    take the file's columns into the writer's, so appending neither fails nor misaligns."""
    if not isinstance(logger, CSVLogger) or rank_zero_only.rank != 0:
        return
    writer = logger.experiment
    path = Path(writer.metrics_file_path)
    if path.is_file():
        with path.open(newline="") as fh:
            header = next(csv.reader(fh), [])
        writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))
