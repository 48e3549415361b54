"""Per-token losses computed once (``qtune-score token_losses.out=DIR``) and read back during
training, memory-mapped: a reference passed over the data once instead of every step.

A directory holding

- ``meta.json``: the format, the columns, the data they were computed on (training-set size
  and digest, ``qtune.data.fingerprint``), the models (parameters) and what computing them cost
  (tokens forwarded, FLOPs);
- ``lengths.npy``: int32 [N], each training sample's input length;
- one ``<column>.npy`` per column, float16 [N, W] (sample id × label position, W = the longest
  input − 1; label position j is the loss of predicting input token j + 1, as ``lm_stats``
  gives it): ``ref_loss`` (the reference model's NLL) and, when asked for, ``base_loss`` (the
  starting model's). NaN where the label is not a response token or past the sample's end.

float16 keeps ~3 significant digits (relative error ≤ 2⁻¹¹), enough to rank tokens; values
above 65504 are stored as 65504. A file written for other data is refused on opening (a
different sample count, any different length, or another data digest), naming what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

FORMAT = "qtune-token-losses/1"
COLUMNS = ("ref_loss", "base_loss")
META = "meta.json"
LENGTHS = "lengths.npy"
FP16_MAX = float(np.finfo(np.float16).max)


def to_fp16(values: np.ndarray) -> np.ndarray:
    """float16, clipped to its finite range (NaN stays NaN)."""
    return np.clip(np.asarray(values, dtype=np.float32), -FP16_MAX, FP16_MAX).astype(np.float16)


class TokenLossFile:
    """A token-loss directory, memory-mapped. ``key`` names the config key it came from in
    errors (``reference.path``), ``writer`` what writes one and ``base_option`` its option that
    adds the base model's losses."""

    def __init__(
        self,
        path: str | Path,
        key: str = "reference.path",
        writer: str = "qtune-score token_losses.out=DIR",
        base_option: str = "qtune-score token_losses.base=true",
    ) -> None:
        self.path, self.key, self.writer, self.base_option = Path(path), key, writer, base_option
        meta_path = self.path / META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{key}={path}: no {META} there; write per-token losses with {writer}")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{key}={path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.lengths = np.load(self.path / LENGTHS, mmap_mode="r")
        self.columns: dict[str, np.ndarray] = {}
        for name in self.meta["columns"]:
            arr = np.load(self.path / f"{name}.npy", mmap_mode="r")
            if arr.dtype != np.float16 or arr.ndim != 2 or arr.shape[0] != self.lengths.shape[0]:
                raise ValueError(f"{key}={path}: {name}.npy is {arr.dtype} {arr.shape}, expected float16 [N, W]")
            self.columns[name] = arr

    def __getstate__(self) -> dict:  # spawned ranks reopen the file instead of copying it
        return {"path": self.path, "key": self.key, "writer": self.writer, "base_option": self.base_option}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["key"], state["writer"], state["base_option"])

    @property
    def num_samples(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def flops(self) -> float:
        """What computing the file cost (every column's forwards)."""
        return float(self.meta.get("flops", 0.0))

    def require(self, column: str, why: str) -> np.ndarray:
        if column not in self.columns:
            raise ValueError(
                f"{self.key}={self.path} holds {sorted(self.columns)}, not {column} ({why}); "
                + (f"rewrite it with {self.base_option}" if column == "base_loss" else "")
            )
        return self.columns[column]

    def check(self, fingerprint: dict, lengths: Sequence[int]) -> None:
        """Refuse a file written for other data, naming the first mismatch."""
        where = f"{self.key}={self.path}"
        n = int(fingerprint["train_samples"])
        if self.num_samples != n or len(lengths) != n:
            raise ValueError(
                f"{where}: written for {self.num_samples} training samples, this run has {n} "
                "(sample count): compute it on this run's data"
            )
        ours = np.asarray(lengths, dtype=np.int64)
        bad = np.flatnonzero(np.asarray(self.lengths, dtype=np.int64) != ours)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{where}: sample {i} has {int(self.lengths[i])} tokens there and {int(ours[i])} in this run's "
                f"data (lengths differ at {bad.size} samples): another tokenizer, max_length or data file"
            )
        stored = (self.meta.get("data_fingerprint") or {}).get("train_digest")
        if stored != fingerprint["train_digest"]:
            raise ValueError(
                f"{where}: data digest {stored} there, {fingerprint['train_digest']} for this run's "
                "training set (data fingerprint): the tokens or labels differ"
            )

    def rows(self, column: str, sample_ids: torch.Tensor, width: int, device=None) -> torch.Tensor:
        """float32 [B, width]: the stored values of these samples' first ``width`` label
        positions (NaN past the stored width). Reads on the host."""
        arr = self.require(column, "asked for by the token rule")
        ids = sample_ids.detach().cpu().numpy()
        w = min(int(width), arr.shape[1])
        out = torch.full((ids.shape[0], int(width)), float("nan"))
        out[:, :w] = torch.from_numpy(np.asarray(arr[ids, :w], dtype=np.float32))
        return out.to(device) if device is not None else out

    def response_values(self, fn, chunk: int = 4096) -> np.ndarray:
        """float32: ``fn(columns_chunk)`` (a dict of float32 [n, W]) at every position where it
        is finite, over all samples in id order (reads the file in row chunks)."""
        parts = []
        for start in range(0, self.num_samples, chunk):
            block = {k: np.asarray(v[start : start + chunk], dtype=np.float32) for k, v in self.columns.items()}
            values = fn(block)
            parts.append(values[np.isfinite(values)])
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
