"""Parameter-efficient fine-tuning: wrap a causal LM in peft LoRA adapters.

peft freezes the base weights and injects trainable low-rank adapters; qtune's optimiser
only ever sees parameters with ``requires_grad`` and ``last.ckpt`` holds only those (see
:mod:`qtune.lightning.trainable_state`), so a LoRA run stores megabytes, not the whole model.
"""

from __future__ import annotations

from typing import Any

import torch


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct last name components of the model's linear layers (what peft matches)."""
    return sorted(
        {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name}
    )


def _targets(model: torch.nn.Module, target_modules: Any) -> str | list[str]:
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return target_modules
        target_modules = [target_modules]
    wanted = [str(t) for t in target_modules]
    names = linear_module_names(model)
    present = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    matched = [t for t in wanted if any(n == t or n.endswith("." + t) for n in present)]
    if not matched:
        raise ValueError(
            f"adapter.target_modules={wanted} matches none of the model's linear "
            f"modules; its linear module names: {names}"
        )
    return wanted


def apply_adapter(adapter_cfg: Any, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` wrapped by peft according to ``adapter_cfg`` (``none``: unchanged).

    The returned module is in train mode (peft keeps the mode it is given; Lightning keeps a
    submodule's mode, so eval mode here would silently switch dropout off)."""
    name = (adapter_cfg.get("name") if adapter_cfg is not None else None) or "none"
    if name == "none":
        return model
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model

    target = adapter_cfg.get("target_modules", "all-linear")
    if OmegaConf.is_config(target):
        target = OmegaConf.to_container(target, resolve=True)
    config = LoraConfig(
        r=int(adapter_cfg.get("r", 8)),
        lora_alpha=float(adapter_cfg.get("alpha", 16)),
        lora_dropout=float(adapter_cfg.get("dropout", 0.0)),
        target_modules=_targets(model, target),
        bias="none",
        task_type="CAUSAL_LM",
    )
    wrapped = get_peft_model(model, config)
    wrapped.train()
    return wrapped


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters), each tied weight counted once."""
    seen: dict[int, torch.nn.Parameter] = {}
    for p in model.parameters():  # parameters() already yields a shared tensor once
        seen[id(p)] = p
    total = sum(p.numel() for p in seen.values())
    return total, sum(p.numel() for p in seen.values() if p.requires_grad)


def base_weights_digest(model: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of the model's weights before fine-tuning, adapters left
    out: two runs with equal digests started from the same base, whatever their seeds."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        name = name.replace("base_model.model.", "").replace(".base_layer", "")  # peft's wrapping
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
