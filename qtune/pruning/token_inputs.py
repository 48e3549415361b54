"""From a step's statistics to a token rule's inputs: what a trainer adapter calls.

A token rule declares its needs (``TokenRule.needs()``); the adapter runs the policy forward
(``lm_stats``), the reference model's forward when ``needs.reference_model`` (no grad: its
per-token loss from ``lm_stats``, its logits for a KL), then :func:`lm_extra_stats` for the
optional outputs, and :func:`token_inputs` to gather them. A declared input that is missing is
an error naming it, so a rule never silently trains on zeros. The step loss is then
``rule.apply(inputs).reduce(stats.loss, sample_weights)``.
"""

from __future__ import annotations

import torch

from qtune.data.sft import IGNORE_INDEX
from qtune.kernels import ExtraStats, token_extra_stats
from qtune.strategies.token_base import TokenInputs, TokenNeeds


def lm_extra_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    needs: TokenNeeds,
    ref_logits: torch.Tensor | None = None,
    backend: str | None = None,
) -> ExtraStats | None:
    """The optional statistics ``needs`` asks for, from a causal LM's logits [B, T, V] and the
    shifted labels [B, T − 1] (label coordinates, as ``lm_stats``); None when it asks for none.
    Labels are padded rather than the logits sliced, so no copy of the N x V logits is made."""
    top_k = needs.top_k if "topk_entropy" in needs.statistics else None
    if needs.reference_kl is not None and ref_logits is None:
        raise ValueError(f"the token rule needs a KL to the reference ({needs.reference_kl}): pass ref_logits")
    if top_k is None and needs.reference_kl is None:
        return None
    padded = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)
    kwargs = {} if backend is None else {"backend": backend}
    extra = token_extra_stats(
        logits,
        padded,
        top_k=top_k,
        ref_logits=ref_logits if needs.reference_kl is not None else None,
        kl_direction=needs.reference_kl or "ref_policy",
        **kwargs,
    )
    return ExtraStats(*(None if t is None else t[:, :-1] for t in extra))


def token_inputs(
    needs: TokenNeeds,
    stats,
    response_mask: torch.Tensor,
    *,
    extra: ExtraStats | None = None,
    ref_loss: torch.Tensor | None = None,
    base_loss: torch.Tensor | None = None,
    score: torch.Tensor | None = None,
    sample_ids: torch.Tensor | None = None,
    seed: int = 0,
    epoch: int = 0,
    step: int = 0,
    rank: int = 0,
) -> TokenInputs:
    """``TokenInputs`` from the policy's ``TokenStats`` (``stats.loss`` keeps its gradient) and
    the optional tensors; raises naming the first declared input that is missing."""
    inputs = TokenInputs(
        loss=stats.loss,
        response_mask=response_mask,
        entropy=stats.entropy,
        p_label=stats.p_label,
        topk_entropy=extra.topk_entropy if extra is not None else None,
        kl=extra.kl if extra is not None else None,
        ref_loss=None if ref_loss is None else ref_loss.detach(),
        base_loss=None if base_loss is None else base_loss.detach(),
        score=score,
        sample_ids=sample_ids,
        seed=seed,
        epoch=epoch,
        step=step,
        rank=rank,
    )
    wanted = list(needs.statistics)
    wanted += ["ref_loss"] * needs.reference_loss + ["kl"] * (needs.reference_kl is not None)
    if needs.token_scores:
        wanted.append("score")
    elif needs.base_loss:
        wanted.append("base_loss")
    for name in wanted:
        if getattr(inputs, name) is None:
            raise ValueError(f"the token rule needs TokenInputs.{name}, which this step did not compute")
    return inputs
