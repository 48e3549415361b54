"""Writing a per-token loss directory (format: ``qtune.pruning.token_loss_file``): one no-grad
pass per distinct model over a training set in id order, for ``qtune-score
token_losses.out=DIR`` (``qtune.cli.token_losses``) and the Hugging Face mixin's
``qtune.hf.write_token_losses``. Trainer-independent: the caller gives the data set, its
collate function (batches with ``sample_id`` and right-padded rows) and the references.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from qtune.pruning.token_loss_file import FORMAT, LENGTHS, META, to_fp16
from qtune.runs.atomic import replaced_dir


def write_token_losses(out: str | Path, columns: dict[str, np.ndarray], lengths: np.ndarray, meta: dict) -> Path:
    """Write the directory whole or not at all (columns: float [N, W], NaN off the response)."""
    with replaced_dir(out) as tmp:
        np.save(tmp / LENGTHS, np.asarray(lengths, dtype=np.int32))
        for name, values in columns.items():
            mm = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.float16, shape=values.shape)
            mm[:] = to_fp16(values)
            mm.flush()
            del mm
        (tmp / META).write_text(json.dumps({"format": FORMAT, **meta, "columns": list(columns)}, indent=2) + "\n")
    return Path(out)


def check_right_padded(batch: dict, key: str | None = None) -> None:
    """Loss files hold label position j of sample i at column j: a left-padded batch (a row
    whose attention mask has a 0 before a 1) would put its positions elsewhere. ``key``: the
    argument or config key named in the error."""
    mask = batch.get("attention_mask")
    if mask is not None and bool((mask[:, 1:] > mask[:, :-1]).any()):
        where = f"{key}: " if key else ""
        raise ValueError(
            f"{where}a per-token loss file holds right-padded rows and this batch is left-padded: "
            "set the tokenizer's padding_side='right' for training"
        )


def token_loss_columns(
    forwards: dict[str, Any], model, dataset, collate, batch_size: int, device, fused_head: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """({column: float32 [N, W]}, lengths [N], tokens forwarded per column). ``forwards`` maps a
    column to a :class:`qtune.pruning.reference.Reference` (forwarded with ``model`` as the
    policy)."""
    from qtune.pruning.planned_step import forward_tokens
    from qtune.pruning.reference import reference_token_loss

    n = len(dataset)
    lengths = np.array([len(dataset[i]["input_ids"]) for i in range(n)], dtype=np.int64)
    width = max(int(lengths.max()) - 1, 1) if n else 1
    cols = {name: np.full((n, width), np.nan, dtype=np.float32) for name in forwards}
    tokens = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        check_right_padded(batch)
        ids = batch["sample_id"].cpu().numpy()
        labels = batch["labels"][:, 1:]
        resp = (labels != -100).cpu().numpy()
        tokens += int(forward_tokens(batch))
        done: dict[int, np.ndarray] = {}  # one forward per distinct model
        for name, ref in forwards.items():
            if id(ref) not in done:
                loss = reference_token_loss(ref, model, batch, fused_head=fused_head).float().cpu().numpy()
                done[id(ref)] = np.where(resp, loss, np.nan)
            cols[name][ids, : resp.shape[1]] = done[id(ref)]
    return cols, lengths, tokens


def loss_file_meta(forwards: dict[str, Any], cols: dict[str, np.ndarray], tokens: int, fingerprint: dict) -> dict:
    """``meta.json``'s content: the data the losses belong to, the models and what they cost
    (2·P per forwarded token for each distinct model)."""
    params = {k: int(v.params) for k, v in forwards.items()}
    distinct = {id(v): int(v.params) for v in forwards.values()}
    return {
        "num_samples": int(fingerprint["train_samples"]),
        "width": int(next(iter(cols.values())).shape[1]),
        "data_fingerprint": {
            "train_samples": fingerprint["train_samples"],
            "train_digest": fingerprint["train_digest"],
        },
        "reference": forwards["ref_loss"].describe(),
        "params": params,
        "tokens_forwarded": tokens,
        "flops": float(sum(2.0 * p * tokens for p in distinct.values())),
    }
