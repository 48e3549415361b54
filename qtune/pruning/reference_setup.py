"""A token rule's reference, declared by any trainer: checked against what the rule reads, and
built with the rule into the run's :class:`~qtune.pruning.token_step.TokenStep`.

A reference is declared as one of four sources: ``none``; ``self`` (the starting model: LoRA
adapters disabled, else a frozen copy); ``path`` (a model directory or a finished qtune run);
``file`` (per-token losses computed once, ``qtune.pruning.token_loss_file``). ``qtune-train``
declares it under ``reference.*`` (``qtune.config.reference``), the Hugging Face mixin with
``pruning_reference`` (``qtune.hf.reference``); both refuse a rule and a source that do not go
together through :func:`check_reference_source`, with the same :class:`ReferenceRefusal`
reason and a message in the caller's own keys (:class:`ReferenceKeys`), and both build the step
with :func:`token_step_for`. Loading a model from a path is the caller's (``qtune.models``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from qtune.pruning.token_composition import TokenKeys
from qtune.strategies.token_base import TokenNeeds

SOURCES = ("none", "self", "path", "file")


class ReferenceRefusal(ValueError):
    """A rule that cannot run with the declared reference. ``reason`` is the same in every
    trainer (``missing``, ``kl_from_file``, ``global_needs_file``, ``base_is_self``); the
    message names the caller's keys."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ReferenceKeys:
    """How a caller spells the reference in its messages: ``declared`` names the key that
    declares it; ``self_``, ``model`` and ``file`` are how to set each source; ``writer`` what
    writes a loss file (``writer_base``: with the base model's losses too, from a reference);
    ``tokens``: the rule's own keys."""

    declared: str = "config key reference.source"
    self_: str = "reference.source=self"
    model: str = "reference.source=path reference.path=DIR"
    file: str = "reference.source=file reference.path=DIR"
    writer: str = "qtune-score token_losses.out=DIR"
    writer_base: str = (
        "qtune-score token_losses.out=DIR token_losses.base=true reference.source=path reference.path=REF"
    )
    tokens: TokenKeys = field(default_factory=TokenKeys)


def reads_reference(needs: TokenNeeds) -> bool:
    """Whether a rule compares with a reference (a model every step, or its losses in a file)."""
    return needs.reference_model or needs.base_loss or needs.token_scores


def check_reference_source(rule, source: str, keys: ReferenceKeys = ReferenceKeys()) -> None:
    """Refuse (:class:`ReferenceRefusal`) a rule whose reference is missing or of a kind it
    cannot use; nothing is loaded. ``source``: one of :data:`SOURCES`."""
    needs = rule.needs()
    if not reads_reference(needs):
        return
    what = f"{keys.tokens.rule}={rule.name!r}"
    scope = keys.tokens.option.format("scope")
    if source == "none":
        raise ReferenceRefusal(
            "missing",
            f"{what} needs a reference model ({keys.declared}): set {keys.self_} (the starting model), "
            f"{keys.model} (a model or a finished qtune run), or {keys.file} (losses from {keys.writer})",
        )
    if needs.reference_kl is not None and source == "file":
        raise ReferenceRefusal(
            "kl_from_file",
            f"{what} needs the reference's whole distribution every step (a KL), which a loss file does "
            f"not hold: set {keys.self_} or {keys.model}",
        )
    if needs.token_scores and source != "file":
        raise ReferenceRefusal(
            "global_needs_file",
            f"{what} with {scope}=global ranks every token of the data set: compute the losses once "
            f"({keys.writer_base}) and set {keys.file}, or use {scope}=sequence",
        )
    if (needs.base_loss or needs.token_scores) and source == "self":
        raise ReferenceRefusal(
            "base_is_self",
            f"{what} scores base - reference losses and the base is the starting model: {keys.self_} "
            f"would score 0 everywhere; set {keys.model} (or a loss file: {keys.file})",
        )


def open_loss_file(path, train, fingerprint: dict, key: str = "reference.path", **names: str):
    """The loss file at ``path``, refused unless it was written for ``train`` (its items'
    ``input_ids`` lengths, and ``fingerprint``: ``train_samples`` and ``train_digest``).
    ``key`` and ``names`` (``writer``, ``base_option``) are how its errors name things."""
    from qtune.pruning.token_loss_file import TokenLossFile

    losses = TokenLossFile(path, key, **names)
    losses.check(fingerprint, item_lengths(train))
    return losses


def item_lengths(train) -> list[int]:
    return [len(train[i]["input_ids"]) for i in range(len(train))]


def training_fingerprint(train) -> dict[str, Any]:
    """What a loss file is checked against for a training set outside qtune's data bundles (a
    Trainer's ``train_dataset``): its size and the digest of its items in order
    (``qtune.data.fingerprint.dataset_digest``, one read of every item)."""
    from qtune.data.fingerprint import dataset_digest

    return {"train_samples": len(train), "train_digest": dataset_digest(train)}


def tokencleaning_threshold(losses, keep_ratio: float) -> float:
    """The global threshold over every response token's base − reference score in the file
    (``qtune.strategies.token_scores.global_threshold``: keep_ratio of them score at least it)."""
    import torch

    from qtune.strategies.token_scores import global_threshold

    losses.require("base_loss", "TokenCleaning's score is base - reference")
    losses.require("ref_loss", "TokenCleaning's score is base - reference")
    values = losses.response_values(lambda c: c["base_loss"] - c["ref_loss"])
    return global_threshold(torch.from_numpy(values), keep_ratio)


def token_step_for(
    rule,
    model,
    *,
    source: str,
    load_reference: Callable[[], Any] | None = None,
    open_losses: Callable[[], Any] | None = None,
    num_params: int,
    fused_head: bool = False,
    backend: str | None = None,
):
    """The :class:`~qtune.pruning.token_step.TokenStep` of ``rule`` on ``model`` (call before
    training: ``self`` is the model as it is now). ``load_reference()`` gives the ``path``
    reference (a :class:`~qtune.pruning.reference.Reference`), ``open_losses()`` the checked
    loss file; each is called only when the rule reads that source. TokenCleaning's global
    threshold is taken from the file unless the rule already has one."""
    from qtune.pruning.reference import self_reference
    from qtune.pruning.token_step import TokenStep

    needs = rule.needs()
    reference = base = losses = None
    if reads_reference(needs):
        if source == "file":
            losses = open_losses()
        elif source == "self":
            reference = self_reference(model)
        else:
            reference = load_reference()
            if needs.base_loss:
                base = self_reference(model)
    if needs.token_scores and getattr(rule, "threshold", None) is None:
        rule.set_threshold(tokencleaning_threshold(losses, rule.keep_ratio))
    return TokenStep(
        rule,
        reference=reference,
        base=base,
        losses=losses,
        num_params=num_params,
        fused_head=fused_head,
        backend=backend,
    )
