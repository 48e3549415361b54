"""``qtune-score token_losses.out=DIR``: per-token losses of the training set, computed once
into a memory-mapped directory (format: ``qtune.pruning.token_loss_file``) that
``reference.source=file reference.path=DIR`` reads back in ``qtune-train``.

``ref_loss`` comes from the reference the config declares (``reference.source=path``: that
model; ``self``: the starting model), ``base_loss`` (``token_losses.base=true``, TokenCleaning's
ℓ_base) from the run's starting model (``model``, ``adapter``). Same config as the training run,
so the data, and its fingerprint, are the same. One no-grad pass per column over the training
set in id order; its cost (2·P per forwarded token per column) is written into the file and
counted by the run that reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from qtune.pruning.token_loss_file import FORMAT, LENGTHS, META, to_fp16
from qtune.runs.atomic import replaced_dir


def write_token_losses(out: str | Path, columns: dict[str, np.ndarray], lengths: np.ndarray, meta: dict) -> Path:
    """Write the directory whole or not at all (columns: float [N, W], NaN off the response)."""
    import json

    with replaced_dir(out) as tmp:
        np.save(tmp / LENGTHS, np.asarray(lengths, dtype=np.int32))
        for name, values in columns.items():
            mm = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.float16, shape=values.shape)
            mm[:] = to_fp16(values)
            mm.flush()
            del mm
        (tmp / META).write_text(json.dumps({"format": FORMAT, **meta, "columns": list(columns)}, indent=2) + "\n")
    return Path(out)


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
        batch = {k: v.to(device) for k, v in batch.items()}
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


def score_token_losses(cfg: DictConfig) -> dict[str, Any]:
    """Build the run's data and models from ``cfg`` and write ``cfg.token_losses.out``."""
    from qtune.config.build import build_task_and_model
    from qtune.config.reference import path_reference_from_config
    from qtune.data.fingerprint import data_fingerprint
    from qtune.kernels import set_default_backend
    from qtune.pruning.reference import Reference, count_params

    set_default_backend(cfg.kernels.backend)
    bundle, model = build_task_and_model(cfg)
    if bundle.task != "sft":
        raise ValueError(f"token_losses.out needs a causal LM task; data={cfg.data.name} is {bundle.task}")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval().requires_grad_(False)
    start = Reference("self", model, count_params(model))  # the starting model as it is: no copy
    forwards = {"ref_loss": start if cfg.reference.source == "self" else path_reference_from_config(cfg, model)}
    if cfg.token_losses.base:
        forwards["base_loss"] = start
    cols, lengths, tokens = token_loss_columns(
        forwards,
        model,
        bundle.train,
        bundle.collate,
        int(cfg.eval_batch_size),
        device,
        bool(cfg.model.get("fused_head", False)),
    )
    params = {k: int(v.params) for k, v in forwards.items()}
    distinct = {id(v): int(v.params) for v in forwards.values()}
    fp = data_fingerprint(bundle)
    meta = {
        "num_samples": len(bundle.train),
        "width": int(next(iter(cols.values())).shape[1]),
        "data_fingerprint": {"train_samples": fp["train_samples"], "train_digest": fp["train_digest"]},
        "reference": forwards["ref_loss"].describe(),
        "params": params,
        "tokens_forwarded": tokens,
        "flops": float(sum(2.0 * p * tokens for p in distinct.values())),
    }
    write_token_losses(cfg.token_losses.out, cols, lengths, meta)
    return {**meta, "columns": list(cols)}
