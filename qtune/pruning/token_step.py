"""What a token rule reads in a training step, computed for one micro-batch.

:class:`TokenStep` is built once per run (``qtune.config.reference.build_token_step``) with the
rule, its reference (``qtune.pruning.reference``) and/or a file of per-token losses
(``qtune.pruning.token_loss_file``); called with the policy model and a micro-batch it runs the
reference forward (no grad) when the rule needs one, the policy's forward (with the top-K
entropy and the KL to the reference computed from the same logits when the rule needs them:
:func:`lm_stats_extra`), and gathers the rule's :class:`TokenInputs`. It also says what the
reference forwards cost, as scoring tokens (``qtune.runs.flops.reference_scoring_tokens``).
:func:`rule_inputs` is what ``train_step`` calls; a trainer adapter passes it a ``token_fn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from qtune.data.sft import IGNORE_INDEX
from qtune.kernels import ExtraStats, linear_extra_stats, linear_token_stats, token_stats
from qtune.pruning.batch_stats import model_inputs
from qtune.pruning.planned_step import forward_tokens
from qtune.pruning.reference import Reference, ReferenceHead, reference_head, reference_token_loss
from qtune.pruning.token_inputs import lm_extra_stats, token_inputs
from qtune.pruning.token_loss_file import TokenLossFile
from qtune.runs.flops import reference_scoring_tokens
from qtune.strategies.token_base import TokenInputs, TokenNeeds


@dataclass
class TokenForward:
    """A step's policy statistics (with gradient), the rule's inputs, and the reference
    forwards' cost in scoring tokens (None: no reference forward)."""

    stats: Any
    inputs: TokenInputs
    scoring_tokens: torch.Tensor | None = None


def needs_policy_extras(needs: TokenNeeds) -> bool:
    return "topk_entropy" in needs.statistics or needs.reference_kl is not None


def needs_step_extras(needs: TokenNeeds) -> bool:
    """Whether a rule reads more than the policy's own token statistics (a reference, base or
    file losses, the top-K entropy): only the padded step computes those so far."""
    return needs.reference_model or needs.base_loss or needs.token_scores or needs_policy_extras(needs)


def lm_stats_extra(
    model,
    batch: dict,
    needs: TokenNeeds,
    labels: torch.Tensor | None = None,
    ref: ReferenceHead | None = None,
    fused_head: bool = False,
    backend: str | None = None,
) -> tuple[Any, ExtraStats | None]:
    """``lm_stats`` plus the optional statistics ``needs`` asks for (top-K entropy; KL to the
    reference ``ref``), all from one forward of the policy: (TokenStats, ExtraStats)."""
    labels = batch["labels"][:, 1:] if labels is None else labels
    kwargs = {} if backend is None else {"backend": backend}
    if fused_head:
        hidden = model.get_decoder()(**model_inputs(batch)).last_hidden_state[:, :-1]
        head = model.get_output_embeddings()
        bias = getattr(head, "bias", None)
        stats = linear_token_stats(hidden, head.weight, labels, bias=bias, **kwargs)
        kl = needs.reference_kl is not None
        if kl and (ref is None or ref.hidden is None):
            raise ValueError("the KL to the reference with a fused head needs the reference's hidden states")
        extra = linear_extra_stats(
            hidden,
            head.weight,
            labels,
            bias=bias,
            top_k=needs.top_k if "topk_entropy" in needs.statistics else None,
            ref_hidden=ref.hidden[:, :-1] if kl else None,
            ref_weight=ref.weight if kl else None,
            ref_bias=ref.bias if kl else None,
            kl_direction=needs.reference_kl or "ref_policy",
        )
        return stats, extra
    logits = model(**model_inputs(batch)).logits
    padded = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)
    stats = token_stats(logits, padded, **kwargs)
    stats = type(stats)(*(t[:, :-1] for t in stats))
    ref_logits = None if ref is None else ref.logits
    return stats, lm_extra_stats(logits, labels, needs, ref_logits=ref_logits, backend=backend)


class TokenStep:
    """Per run: a token rule with what it reads. ``reference``: the model ``ref_loss`` and the
    KL come from; ``base``: the starting model ``base_loss`` comes from; ``losses``: a file
    both come from instead (and TokenCleaning's ``score`` = base − ref); ``num_params``: the
    policy's parameters (a reference forward costs its own parameters' share of a token)."""

    def __init__(
        self,
        rule,
        *,
        reference: Reference | None = None,
        base: Reference | None = None,
        losses: TokenLossFile | None = None,
        num_params: int = 1,
        fused_head: bool = False,
        backend: str | None = None,
    ) -> None:
        self.rule, self.needs = rule, rule.needs()
        self.reference, self.base, self.losses = reference, base, losses
        self.num_params, self.fused_head, self.backend = int(num_params), bool(fused_head), backend

    # -- what a step reads ------------------------------------------------------------------------
    def _file(self, column: str, batch: dict, width: int, device) -> torch.Tensor:
        if "seg" in batch:
            raise ValueError("reference.source=file reads padded batches, not packed ones (data.pack)")
        return self.losses.rows(column, batch["sample_id"], width, device)

    def __call__(
        self, model, stats_fn: Callable, batch: dict, *, seed=0, epoch=0, step=0, rank=0, reference_policy=None
    ) -> TokenForward:
        """``model``: the policy, forwarded with gradient; ``reference_policy``: the same model as
        the reference forwards see it (a ``self`` reference disables its adapters), when
        ``model`` is a wrapper (DDP) without the model's own methods; default ``model``."""
        needs = self.needs
        policy = model if reference_policy is None else reference_policy
        labels = batch["labels"][:, 1:]
        width, dev = labels.shape[1], labels.device
        head = ref_loss = base_loss = score = None
        ref_params = 0
        if needs.reference_kl is not None:
            head = reference_head(self.reference, policy, batch, self.fused_head)
            ref_params += self.reference.params
        if needs.reference_loss:
            if head is not None:
                ref_loss = head.token_loss(labels, self.backend)
            elif self.losses is not None:
                ref_loss = self._file("ref_loss", batch, width, dev)
            else:
                ref_loss = reference_token_loss(
                    self.reference, policy, batch, labels, fused_head=self.fused_head, backend=self.backend
                )
                ref_params += self.reference.params
        if needs.base_loss and not needs.token_scores:
            if self.losses is not None:
                base_loss = self._file("base_loss", batch, width, dev)
            else:
                base_loss = reference_token_loss(
                    self.base, policy, batch, labels, fused_head=self.fused_head, backend=self.backend
                )
                ref_params += self.base.params
        if needs.token_scores:
            score = (self._file("base_loss", batch, width, dev) - self._file("ref_loss", batch, width, dev)).double()
        if needs_policy_extras(needs):
            stats, extra = lm_stats_extra(model, batch, needs, labels, head, self.fused_head, self.backend)
        else:
            stats, extra = stats_fn(batch), None
        inputs = token_inputs(
            needs,
            stats,
            stats.valid,
            extra=extra,
            ref_loss=ref_loss,
            base_loss=base_loss,
            score=score,
            sample_ids=batch["sample_id"],
            seed=seed,
            epoch=epoch,
            step=step,
            rank=rank,
        )
        scoring = None
        if ref_params:
            scoring = reference_scoring_tokens(forward_tokens(batch), ref_params, self.num_params)
        return TokenForward(stats, inputs, scoring)

    # -- what the run records -----------------------------------------------------------------
    @property
    def file_flops(self) -> float:
        """What computing the loss file cost (0 without one): spent before the first step."""
        return self.losses.flops if self.losses is not None else 0.0

    def identity(self) -> dict[str, Any]:
        """What the rule compares with, as a resumed run must too (checkpoints store it)."""
        out: dict[str, Any] = {}
        if self.reference is not None:
            out.update(source=self.reference.source, path=self.reference.path)
        if self.base is not None:
            out["base"] = self.base.path
        if self.losses is not None:
            out.update(source="file", path=str(self.losses.path))
        return out

    def summary(self) -> dict[str, Any]:
        """The run summary's ``reference`` entry: what the rule compared with and what it cost."""
        out: dict[str, Any] = {}
        if self.reference is not None:
            out.update(self.reference.describe())
        if self.base is not None:
            out["base"] = self.base.describe()
        if self.losses is not None:
            out.update(
                source="file",
                path=str(self.losses.path),
                file_reference=self.losses.meta.get("reference"),
                file_columns=sorted(self.losses.columns),
                file_flops=self.losses.flops,
            )
        threshold = getattr(self.rule, "threshold", None)
        if threshold is not None:
            out["threshold"] = threshold
        return out


def rule_inputs(stats_fn: Callable, batch: dict, strategy, epoch: int, step: int, token_fn: Callable | None = None):
    """(policy stats, the token rule's inputs, reference scoring tokens or None) for
    ``train_step``. ``token_fn(batch, seed=, epoch=, step=)`` (a :class:`TokenStep` bound to
    the policy model) computes what the rule needs; without one, only rules on the policy's
    own statistics can run (a missing input is an error naming it)."""
    seed = getattr(strategy, "seed", 0)
    if token_fn is not None:
        out = token_fn(batch, seed=seed, epoch=epoch, step=step)
        return out.stats, out.inputs, out.scoring_tokens
    stats = stats_fn(batch)
    rule = strategy.token_rule
    inputs = token_inputs(
        rule.needs(), stats, stats.valid, sample_ids=batch["sample_id"], seed=seed, epoch=epoch, step=step
    )
    return stats, inputs, None
