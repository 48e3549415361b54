"""``qtune-score token_losses.out=DIR``: per-token losses of the training set, computed once
into a memory-mapped directory (format: ``qtune.pruning.token_loss_file``) that
``reference.source=file reference.path=DIR`` reads back in ``qtune-train``.

``ref_loss`` comes from the reference the config declares (``reference.source=path``: that
model; ``self``: the starting model), ``base_loss`` (``token_losses.base=true``, TokenCleaning's
ℓ_base) from the run's starting model (``model``, ``adapter``). Same config as the training run,
so the data, and its fingerprint, are the same. One no-grad pass per column over the training
set in id order; its cost (2·P per forwarded token per column) is written into the file and
counted by the run that reads it (the pass itself: ``qtune.pruning.token_loss_writer``).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from qtune.pruning.token_loss_writer import loss_file_meta, token_loss_columns, write_token_losses


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
    meta = loss_file_meta(forwards, cols, tokens, data_fingerprint(bundle))
    write_token_losses(cfg.token_losses.out, cols, lengths, meta)
    return {**meta, "columns": list(cols)}
