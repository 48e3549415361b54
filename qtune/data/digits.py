"""scikit-learn's digits as a classification task: real data, one label per sample.

Each item is the one-token case of the SFT shape: ``inputs`` is FloatTensor[64] (8x8 pixels
scaled from 0..16 to [0, 1] by a fixed factor, so no statistic leaks from eval into train) and
``labels`` is LongTensor[1], the class. The train/eval split is stratified and deterministic
from the seed, so every rank and every resumed run sees the same split.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from qtune.data.bundle import TaskBundle

NUM_FEATURES = 64
NUM_CLASSES = 10
PIXEL_MAX = 16.0  # load_digits pixel intensities are integers in 0..16


class ClassifyDataset(Dataset):
    """Features [N, F] and class labels [N]; ``sample_id`` is the index within this split."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        if len(inputs) != len(labels):
            raise ValueError("inputs and labels must have the same length")
        self.inputs = inputs.float()
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> dict:
        return {"sample_id": int(idx), "inputs": self.inputs[idx], "labels": self.labels[idx : idx + 1]}


def collate_classify(items: Sequence[dict]) -> dict:
    """Stack items: ``inputs`` [B, F], ``labels`` [B, 1], ``sample_id`` [B]."""
    return {
        "sample_id": torch.tensor([int(it["sample_id"]) for it in items], dtype=torch.long),
        "inputs": torch.stack([it["inputs"] for it in items]),
        "labels": torch.stack([it["labels"] for it in items]),
    }


def split_indices(labels: np.ndarray, eval_fraction: float, seed: int):
    """Sorted ``(train, eval)`` row indices: stratified by label, deterministic in seed."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"data.eval_fraction must be in (0, 1), got {eval_fraction}")
    classes, n = len(np.unique(labels)), len(labels)
    n_eval = math.ceil(eval_fraction * n)  # scikit-learn's count for a fractional test_size
    if min(n_eval, n - n_eval) < classes:
        lowest, highest = classes / n, 1 - classes / n
        raise ValueError(
            f"data.eval_fraction={eval_fraction} gives {n_eval} eval and {n - n_eval} training items for "
            f"{classes} classes; the stratified split needs one of each class on both sides: use a value "
            f"in [{math.ceil(lowest * 1e4) / 1e4}, {math.floor(highest * 1e4) / 1e4}]"
        )
    idx_train, idx_eval = train_test_split(
        np.arange(len(labels)), test_size=eval_fraction, random_state=seed, stratify=labels
    )
    return np.sort(idx_train), np.sort(idx_eval)


def split_digits(eval_fraction: float = 0.2, seed: int = 0):
    """``(x_train, y_train, x_eval, y_eval)`` as tensors, features scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / PIXEL_MAX).astype(np.float32)
    idx_train, idx_eval = split_indices(y, eval_fraction, seed)
    return (
        torch.from_numpy(x[idx_train]),
        torch.from_numpy(y[idx_train]),
        torch.from_numpy(x[idx_eval]),
        torch.from_numpy(y[idx_eval]),
    )


def build_digits_task(cfg: Any) -> TaskBundle:
    """TaskBundle (task="classify"); ``info`` carries the model's input and output sizes."""
    x_tr, y_tr, x_ev, y_ev = split_digits(float(cfg.get("eval_fraction", 0.2)), int(cfg.get("seed", 0)))
    train = ClassifyDataset(x_tr, y_tr)
    return TaskBundle(
        task="classify",
        train=train,
        eval=ClassifyDataset(x_ev, y_ev),
        collate=collate_classify,
        train_meta=[{"label": int(c)} for c in y_tr],
        info={
            "num_features": NUM_FEATURES,
            "num_classes": NUM_CLASSES,
            "train_size": len(train),
            "eval_size": len(y_ev),
        },
    )
