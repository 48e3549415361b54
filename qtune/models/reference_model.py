"""Load a token rule's reference model from a path: a Hugging Face model directory, a finished
qtune run's ``final/`` (merged weights, or a LoRA adapter saved alone with
``adapter.merge=false``), or the run directory itself (its ``final/`` is used, and its
``summary.json`` says what training the reference cost).

The model comes back in eval mode, in the policy's dtype; the caller freezes it
(``qtune.pruning.reference.path_reference``) and moves it to the policy's device on first use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def resolve_reference_dir(path: str | Path, key: str = "reference.path") -> tuple[Path, dict[str, Any]]:
    """(the model directory, what is known about it): a run directory gives its ``final/`` and
    the FLOPs its training spent (``training_flops``, from its ``summary.json``)."""
    p = Path(str(path)).expanduser()
    info: dict[str, Any] = {}
    if (p / "final").is_dir() and not (p / "config.json").is_file():
        p = p / "final"
    summary = p.parent / "summary.json"
    if p.name == "final" and summary.is_file():
        data = json.loads(summary.read_text())
        info.update(training_flops=data.get("flops_estimate"), run_dir=str(p.parent))
    if not ((p / "config.json").is_file() or (p / "adapter_config.json").is_file()):
        raise FileNotFoundError(
            f"{key}={path}: neither a Hugging Face model directory (config.json), a LoRA adapter "
            "(adapter_config.json) nor a finished qtune run (final/)"
        )
    return p, info


def _dtype_of(model: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _vocab(model: torch.nn.Module) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return None if head is None else int(head.weight.shape[0])


def load_reference_model(path: str | Path, like: torch.nn.Module, key: str = "reference.path"):
    """(model, info): the reference at ``path`` in ``like``'s dtype, checked to share its
    vocabulary (the per-token losses and the KL compare the same token ids)."""
    directory, info = resolve_reference_dir(path, key)
    dtype = _dtype_of(like)
    from qtune.models.hf import _dtype_kwargs

    if (directory / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(directory), **_dtype_kwargs(dtype))
    else:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(directory), **_dtype_kwargs(dtype)).merge_and_unload()
    check_vocabulary(model, like, f"{key}={path}")
    return model.eval(), {**info, "dir": str(directory)}


def check_vocabulary(model: torch.nn.Module, like: torch.nn.Module, where: str) -> None:
    """Refuse a reference that predicts other token ids than the trained model ``like``."""
    ours, theirs = _vocab(like), _vocab(model)
    if ours is not None and theirs != ours:
        raise ValueError(
            f"{where}: the reference predicts {theirs} token ids, the trained model {ours}: "
            "a reference must share the trained model's tokenizer"
        )
