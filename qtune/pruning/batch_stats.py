"""From a batch to per-token statistics and per-sample aggregates, through ``qtune.kernels``.

Both tasks look the same here: a causal LM predicts token t+1 from t (logits and labels are
shifted by one), a classifier predicts one "token" per sample (logits [B, 1, C], labels [B, 1]).
"""

from __future__ import annotations

import torch

from qtune.data.sft import IGNORE_INDEX
from qtune.kernels import token_stats
from qtune.pruning.response_head import head_split, labelled_stats


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean of ``values`` [B, T] over ``mask``; rows with no masked token give NaN."""
    m = mask.to(values.dtype)
    count = m.sum(-1)
    total = (values * m).sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def sample_scores(stats, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample aggregates over the response tokens in ``mask`` (detached)."""
    return {
        "loss": masked_mean(stats.loss.detach(), mask),
        "entropy": masked_mean(stats.entropy, mask),
        "el2n": masked_mean(stats.el2n, mask),
        "p_label": masked_mean(stats.p_label, mask),
        "margin": masked_mean(stats.margin, mask),
        "accuracy": masked_mean(stats.correct.detach(), mask),
        "num_tokens": mask.sum(-1),
    }


def next_token_labels(batch: dict) -> torch.Tensor:
    """Labels for every attended position (prompt included), for uncertainty over all tokens.
    In a packed batch no label crosses a sample boundary or lands on padding."""
    labels = batch["input_ids"][:, 1:].clone()
    attn = batch.get("attention_mask")
    if attn is not None:
        labels[attn[:, 1:] == 0] = IGNORE_INDEX
    if "seg" in batch:
        labels[(batch["seg"][:, 1:] < 0) | (batch["position_ids"][:, 1:] == 0)] = IGNORE_INDEX
    return labels


def model_inputs(batch: dict) -> dict:
    """The model's keyword arguments. A packed batch (``seg``) passes ``position_ids`` and no
    attention mask, and turns the cache off: transformers keeps packed samples apart only
    without a mask (even one of all ones) and without a cache (a config's ``use_cache=True``
    would build one and let attention cross samples)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    if batch.get("position_ids") is not None:
        inputs.update(position_ids=batch["position_ids"], use_cache=False)
    if "seg" in batch:
        inputs["attention_mask"] = None
    return inputs


def _forward_casts(model, batch: dict) -> bool:
    """True when the model's forward was wrapped in mixed-precision autocast (accelerate does
    this under the HF Trainer's ``bf16``/``fp16``, keeping the original as ``_original_forward``)
    and no autocast is active here: calling its decoder directly would escape that cast, so the
    response-only head is not used."""
    if getattr(model, "_original_forward", None) is None:
        return False
    return not torch.is_autocast_enabled(batch["input_ids"].device.type)


def lm_stats(
    model,
    batch: dict,
    labels: torch.Tensor | None = None,
    fused_head: bool = False,
    backend: str | None = None,
    response_only_head: bool = True,
):
    """Token statistics of a causal LM on ``batch``; labels default to the response-only ones.
    A packed batch (``position_ids``, ``seg``) gives them in label coordinates [R, L - 1].

    ``response_only_head`` (the ``model.response_only_head`` key) applies the LM head to the
    labelled positions only (:mod:`qtune.pruning.response_head`): the same statistics with
    less work where most positions are prompt. A model whose logits are not its head applied
    to its decoder's output, or that has no ``get_decoder`` (a DDP wrapper), gets the full head,
    which ``response_only_head=False`` always uses."""
    labels = batch["labels"][:, 1:] if labels is None else labels
    split = head_split(model) if response_only_head and not _forward_casts(model, batch) else None
    if split is not None:
        decoder, head = split
        hidden = decoder(**model_inputs(batch)).last_hidden_state
        return labelled_stats(hidden, labels, head, fused_head, backend)
    kwargs = {} if backend is None else {"backend": backend}
    if fused_head:
        from qtune.kernels import linear_token_stats

        hidden = model.get_decoder()(**model_inputs(batch)).last_hidden_state
        head = model.get_output_embeddings()
        return linear_token_stats(hidden[:, :-1], head.weight, labels, bias=getattr(head, "bias", None), **kwargs)
    logits = model(**model_inputs(batch)).logits
    # pad the labels instead of slicing the logits: logits[:, :-1] would copy all N x V of them
    padded = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)
    stats = token_stats(logits, padded, **kwargs)
    return type(stats)(*(t[:, :-1] for t in stats))


def classifier_stats(model, batch: dict, backend: str | None = None):
    logits = model(batch["inputs"])
    if logits.dim() == 2:
        logits = logits.unsqueeze(1)
    kwargs = {} if backend is None else {"backend": backend}
    return token_stats(logits, batch["labels"].view(-1, 1), **kwargs)
