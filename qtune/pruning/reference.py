"""A token rule's reference model: a frozen model forwarded without gradient, and what one of
its forwards gives a training step (per-token loss; logits or last hidden states for a KL).

One interface, :class:`Reference`, for the two kinds a run can declare:

- the starting model itself (``source="self"``). With LoRA (peft) it is the policy's own
  forward with its adapters disabled, so no second copy is held; without adapters it is a
  frozen copy taken before training (one more set of the model's weights in memory).
- a model loaded from a path (``qtune.models.reference_model``): frozen, in eval mode, moved
  to the policy's device (and dtype) on first use.

Trainer-independent: the Lightning module and the Hugging Face mixin call the same functions
(:func:`reference_token_loss`, :func:`reference_head`) with their own policy model.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import torch

from qtune.data.sft import IGNORE_INDEX
from qtune.kernels import linear_token_stats, token_stats
from qtune.pruning.batch_stats import lm_stats, model_inputs


def has_adapters(model: Any) -> bool:
    """A peft model whose adapters can be switched off for a forward."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def count_params(module: torch.nn.Module, frozen_only: bool = False) -> int:
    """Parameters of ``module`` (each shared tensor once); ``frozen_only``: those without grad."""
    return sum(p.numel() for p in module.parameters() if not (frozen_only and p.requires_grad))


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    return module.eval()


@dataclass
class Reference:
    """A frozen model for a token rule. ``module`` None: the policy with its adapters disabled.
    ``params``: the parameters one forward touches (FLOPs: 2·params per token)."""

    source: str  # "self" | "path"
    module: torch.nn.Module | None
    params: int
    path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what the summary records about it

    @contextmanager
    def forward_model(self, policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The module to forward as the reference: in eval mode, under ``no_grad``."""
        if self.module is None:
            with torch.no_grad(), policy.disable_adapter(), eval_mode(policy):
                yield policy
            return
        p = next(policy.parameters(), None)
        q = next(self.module.parameters(), None)
        if p is not None and q is not None and q.device != p.device:
            self.module.to(p.device)  # once: the policy moved to its device after the build
        with torch.no_grad():
            yield self.module

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "path": self.path, "params": self.params, **self.info}


def self_reference(policy: torch.nn.Module) -> Reference:
    """The starting model: the adapters switched off (peft), else a frozen copy of ``policy``
    as it is now (call before training)."""
    if has_adapters(policy):
        return Reference("self", None, count_params(policy, frozen_only=True), info={"copy": False})
    return Reference("self", freeze(copy.deepcopy(policy)), count_params(policy), info={"copy": True})


def path_reference(module: torch.nn.Module, path: str, info: dict | None = None) -> Reference:
    """A loaded model (``qtune.models.reference_model.load_reference_model``), frozen here."""
    return Reference("path", freeze(module), count_params(module), str(path), dict(info or {}))


def reference_token_loss(
    ref: Reference,
    model: torch.nn.Module,
    batch: dict,
    labels: torch.Tensor | None = None,
    *,
    fused_head: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """The reference's per-token NLL on ``batch`` (label coordinates, as ``lm_stats``; 0 where
    the label is ignored), without gradient. ``model`` is the policy (the ``self`` reference
    forwards it with its adapters disabled)."""
    with ref.forward_model(model) as m:
        return lm_stats(m, batch, labels, fused_head, backend).loss.detach()


class ReferenceHead(NamedTuple):
    """What a KL to the reference needs: its logits [B, T, V], or (fused head) its last hidden
    states [B, T, H] and LM head. Input coordinates (not yet shifted)."""

    logits: torch.Tensor | None
    hidden: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def token_loss(self, labels: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """Per-token NLL [B, T − 1] from these outputs (no second forward)."""
        kwargs = {} if backend is None else {"backend": backend}
        with torch.no_grad():
            if self.logits is None:
                return linear_token_stats(self.hidden[:, :-1], self.weight, labels, bias=self.bias, **kwargs).loss
            padded = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)
            return token_stats(self.logits, padded, **kwargs).loss[:, :-1]


def reference_head(ref: Reference, model: torch.nn.Module, batch: dict, fused_head: bool = False) -> ReferenceHead:
    """The reference's logits (or, with ``fused_head``, hidden states and head) on ``batch``,
    without gradient."""
    with ref.forward_model(model) as m:
        if not fused_head:
            return ReferenceHead(m(**model_inputs(batch)).logits.detach())
        hidden = m.get_decoder()(**model_inputs(batch)).last_hidden_state.detach()
        head = m.get_output_embeddings()
        bias = getattr(head, "bias", None)
        return ReferenceHead(None, hidden, head.weight.detach(), None if bias is None else bias.detach())
