"""Checkpoint state of a partly frozen model: only the trainable parameters.

With LoRA the frozen base weights are most of the model and never change, so storing them in
every ``last.ckpt`` would cost gigabytes for nothing: they are dropped on save and come back
from the base model on resume. Loading is therefore non-strict for frozen weights only; a
missing trainable weight (or an unknown key) still refuses to load, by name.
"""

from __future__ import annotations

import torch


def frozen_keys(module: torch.nn.Module) -> set[str]:
    """State-dict keys of the frozen parameters (every name of a tied weight)."""
    return {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def drop_frozen(module: torch.nn.Module, state_dict: dict) -> dict:
    """``state_dict`` without the frozen parameters (unchanged when nothing is frozen)."""
    frozen = frozen_keys(module)
    if not frozen:
        return state_dict
    return type(state_dict)((k, v) for k, v in state_dict.items() if k not in frozen)


def check_loadable(module: torch.nn.Module, state_dict: dict) -> None:
    """Refuse a state dict that lacks a trainable (or persistent non-parameter) entry of
    ``module`` or holds a key ``module`` does not have; frozen parameters may be absent."""
    own = set(module.state_dict().keys())
    required = own - frozen_keys(module)
    missing = sorted(required - set(state_dict))
    unexpected = sorted(set(state_dict) - own)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing trainable key(s) {missing[:8]}"
                + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected key(s) {unexpected[:8]}"
                + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else "")
            )
        raise RuntimeError("checkpoint does not fit this model (another adapter or model config?): " + "; ".join(parts))
