"""Load one per-sample score column from a ``qtune-score`` file (JSON or NPZ, never pickle).

Static strategies (EL2N, CCS) can take their scores from a file written earlier, e.g. by a
scoring run on a checkpoint or averaged over several seeds. The file holds a ``sample_id``
array and one array per score column; ids must be exactly 0..N−1 of the training set in use,
otherwise the scores belong to another dataset and the plan would be silently wrong.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch


def _read_columns(path: Path) -> dict[str, np.ndarray]:
    """Columns of a .json or .npz scores file; a malformed file is an error naming it."""
    try:
        return _parse_columns(path)
    except ValueError as exc:
        if str(exc).startswith("scores file"):
            raise
        raise ValueError(f"scores file {path}: {type(exc).__name__}: {exc}") from None
    except (TypeError, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"scores file {path}: malformed ({type(exc).__name__}: {exc})") from None


def _parse_columns(path: Path) -> dict[str, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        with path.open() as fh:
            data = json.load(fh)
        if isinstance(data, list):  # list of records {"sample_id": .., "el2n": ..}
            if not all(isinstance(row, dict) for row in data):
                raise ValueError(f"scores file {path}: expected a JSON object of arrays or a list of records")
            keys = sorted({k for row in data for k in row})
            data = {k: [row.get(k) for row in data] for k in keys}
        if not isinstance(data, dict):
            raise ValueError(f"scores file {path}: expected a JSON object of arrays")
        for k, v in data.items():
            if isinstance(v, list) and not all(
                x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in v
            ):
                raise ValueError(f"scores file {path}: column {k!r} holds values that are not numbers")
        out = {}
        for k, v in data.items():
            if isinstance(v, list):
                out[k] = np.array([math.nan if x is None else x for x in v], dtype=np.float64)
        return out
    if suffix == ".npz":
        if not zipfile.is_zipfile(path):
            raise ValueError(f"scores file {path}: not an NPZ archive (empty, truncated or another format)")
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        except ValueError as exc:  # object arrays need pickle: refuse
            raise ValueError(f"scores file {path}: cannot load without pickle ({exc})") from None
    raise ValueError(
        f"scores file {path}: unsupported format {suffix!r}; expected .json or .npz "
        "(pickle-based formats are refused because loading them can run arbitrary code)"
    )


def load_scores(path: str | Path, num_samples: int, column: str) -> torch.Tensor:
    """Scores of ``column`` as a float tensor of length ``num_samples``, indexed by sample id."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"scores file {path} does not exist")
    cols = _read_columns(path)
    if "sample_id" not in cols:
        raise ValueError(f"scores file {path} has no 'sample_id' array; columns: {sorted(cols)}")
    if column not in cols:
        available = sorted(k for k in cols if k != "sample_id")
        raise KeyError(f"scores file {path} has no column {column!r}; available: {available}")
    ids = np.asarray(cols["sample_id"])
    for name in ("sample_id", column):
        if np.asarray(cols[name]).dtype.kind not in "biuf":
            raise ValueError(
                f"scores file {path}: column {name!r} holds {np.asarray(cols[name]).dtype} values, not numbers"
            )
    vals = np.asarray(cols[column], dtype=np.float64).reshape(-1)
    infinite = int(np.isinf(vals).sum())
    if infinite:
        raise ValueError(
            f"scores file {path}: column {column!r} has {infinite} infinite value(s); a score is a "
            "finite number, or NaN for a sample with no score (never kept)"
        )
    if ids.size and not np.all(np.equal(np.mod(ids, 1), 0)):
        raise ValueError(f"scores file {path}: sample_id values must be integers")
    ids = ids.astype(np.int64).reshape(-1)
    if ids.size != vals.size:
        raise ValueError(f"scores file {path}: {ids.size} sample ids but {vals.size} {column!r} values")
    if ids.size != num_samples:
        raise ValueError(
            f"scores file {path} has {ids.size} samples but the training set has {num_samples}: "
            "was it scored on a different dataset or split?"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= num_samples or np.unique(ids).size != ids.size):
        raise ValueError(f"scores file {path}: sample ids must be each of 0..{num_samples - 1} exactly once")
    if ids.size and not np.isfinite(vals).any():
        raise ValueError(
            f"scores file {path}: column {column!r} has no finite value (all NaN or inf), so it cannot rank samples"
        )
    out = torch.full((num_samples,), float("nan"), dtype=torch.float32)
    out[torch.from_numpy(ids)] = torch.from_numpy(vals).float()
    return out
