"""The run's ``metrics.csv`` across a resume.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, so a resumed run
would lose every row logged before the interruption. Here the rows the checkpoint covers
are kept; the rows logged after it are dropped, because the resumed run trains those steps
again and logs them anew.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only


def _rows_up_to(path: Path, step: int) -> tuple[list[str], list[dict]]:
    """The rows written before a checkpoint at global step `step`, in file order: a training
    row at step s is the batch that makes optimiser step s + 1, so the resumed run logs rows
    from the first training row at `step` on (and anything beyond `step`) again; the epoch-end
    rows at `step` itself were written before an end-of-epoch checkpoint."""
    rows = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        for r in reader:
            s = float(r["step"]) if r.get("step") else None
            if s is not None and (s > step or (s == step and any(
                    k.startswith("train/") and v for k, v in r.items()))):
                break
            rows.append(r)
        return list(reader.fieldnames or []), rows


def csv_logger(run_dir: Path, resume_step: int | None = None) -> CSVLogger:
    """A CSVLogger writing ``run_dir/metrics.csv``; with `resume_step`, after the kept rows."""
    path = Path(run_dir) / "metrics.csv"
    header, rows = [], []
    if resume_step is not None and path.is_file() and rank_zero_only.rank == 0:
        header, rows = _rows_up_to(path, resume_step)
    logger = CSVLogger(save_dir=str(run_dir), name="", version="")
    if header:
        writer = logger.experiment  # creating the writer deletes the old file
        with path.open("w", newline="") as fh:
            out = csv.DictWriter(fh, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = sorted(header)  # later rows append (new keys rewrite the header)
    return logger
