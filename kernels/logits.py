"""`token_stats`: the statistics from logits, one entry point over every backend."""

from __future__ import annotations

import torch

from .autograd import StatsFunction
from .dispatch import call_with_fallback, is_auto, resolve_backend
from .reference import TokenStats, token_stats_reference


def run_rows(z2, y2, valid2, name: str, fallback: bool = False):
    """The 7 row outputs of backend `name` on [N, V] logits (autograd-aware for the loss)."""
    return call_with_fallback(
        lambda impl: StatsFunction.apply(z2, y2, valid2, impl, fallback), name, z2.device.type, fallback
    )


def check_labels(labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> None:
    """Fail on a supervised label outside [0, V). On CUDA this is a device-side assert (no host
    sync per step: the error surfaces at the next synchronisation); on CPU it raises here.
    Without it an out-of-range label silently reads another row's logit or out of bounds."""
    bad = valid & ((labels < 0) | (labels >= num_classes))
    torch._assert_async(
        ~bad.any(),
        f"qtune.kernels: a label is outside [0, {num_classes}) (the vocabulary / class count) and is not ignore_index",
    )


def token_stats(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, backend: str | None = None
) -> TokenStats:
    """Per-token loss, entropy, EL2N, p_label, correct and margin from logits [..., V].

    `labels` has the logits' leading shape (already shifted for causal LMs); outputs are fp32
    with that shape; ignored positions give 0 and valid=False. Only `loss` carries gradient.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    name = resolve_backend(backend, logits.device)
    if name == "reference" or labels.numel() == 0:
        return token_stats_reference(logits, labels, ignore_index)
    v = logits.shape[-1]
    z2 = logits.reshape(-1, v)
    if z2.stride(-1) != 1:
        z2 = z2.contiguous()
    lab = labels.reshape(-1)
    valid = lab != ignore_index
    check_labels(lab, valid, v)
    y = torch.where(valid, lab, torch.zeros_like(lab)).long()
    rows = run_rows(z2, y, valid, name, fallback=is_auto(backend))
    shape = labels.shape
    loss, ent, el2n, p_y, correct, margin, _ = (r.view(shape) for r in rows)
    return TokenStats(loss, ent, el2n, p_y, correct, margin, valid.view(shape))
