"""The ``reference:`` config block: the one reference model a run's token rule compares with,
checked against what the rule needs, and built into the run's ``TokenStep``.

``reference.source``: ``none``; ``self`` (the starting model: LoRA adapters disabled, else a
frozen copy); ``path`` (``reference.path``: an HF directory, a qtune run or its ``final/``);
``file`` (``reference.path``: per-token losses written by ``qtune-score token_losses.out=DIR``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional

from omegaconf import OmegaConf

from qtune.config.declared import ConfigError
from qtune.pruning.token_step import needs_step_extras

SOURCES = ("none", "self", "path", "file")


@dataclasses.dataclass
class ReferenceConfig:
    source: Literal[SOURCES] = "none"
    path: Optional[str] = None


@dataclasses.dataclass
class TokenLossesConfig:
    """``qtune-score``: write per-token losses (``out``: a directory) instead of per-sample scores."""

    out: Optional[str] = None
    base: bool = False  # also the starting model's losses (TokenCleaning's base - reference score)


def reference_of(cfg: Any) -> tuple[str, Optional[str]]:
    return (
        str(OmegaConf.select(cfg, "reference.source", default="none") or "none"),
        OmegaConf.select(cfg, "reference.path", default=None),
    )


def check_reference_config(cfg: Any) -> None:
    """``reference.path`` goes with ``source=path`` or ``file`` and names something there."""
    source, path = reference_of(cfg)
    if source in ("path", "file"):
        if not path:
            raise ConfigError(f"reference.source={source} needs reference.path=DIR")
        if not Path(str(path)).expanduser().is_dir():
            raise FileNotFoundError(f"reference.path={path}: no such directory")
    elif path:
        raise ConfigError(f"reference.path={path} is read only with reference.source=path or file (it is {source})")


def check_reference(cfg: Any, rule) -> None:
    """Refuse, naming the keys, a token rule whose reference is missing or of a kind it cannot
    use; called when the config is validated, before anything is loaded."""
    needs = rule.needs()
    if bool(OmegaConf.select(cfg, "data.packing", default=False)) and needs_step_extras(needs):
        raise ConfigError(
            f"strategy.token={rule.name!r} reads a reference model's losses or top-K entropies, which "
            "data.packing=true does not compute yet: set data.packing=false, or use a rule on the "
            "policy's own statistics (random, ppl, dft)"
        )
    wants = needs.reference_model or needs.base_loss or needs.token_scores
    if not wants:
        return
    source, _ = reference_of(cfg)
    what = f"strategy.token={rule.name!r}"
    if str(OmegaConf.select(cfg, "task", default="sft")) != "sft":
        raise ConfigError(f"{what} compares with a reference language model: it needs task=sft")
    if source == "none":
        raise ConfigError(
            f"{what} needs a reference model (config key reference.source): set reference.source=self "
            "(the starting model), reference.source=path reference.path=DIR (a model or a finished qtune "
            "run), or reference.source=file reference.path=DIR (losses from qtune-score token_losses.out=DIR)"
        )
    if needs.reference_kl is not None and source == "file":
        raise ConfigError(
            f"{what} needs the reference's whole distribution every step (a KL), which a loss file does "
            "not hold: set reference.source=self or reference.source=path"
        )
    if needs.token_scores and source != "file":
        raise ConfigError(
            f"{what} with strategy.token.scope=global ranks every token of the data set: compute the losses "
            "once (qtune-score token_losses.out=DIR token_losses.base=true reference.source=path "
            "reference.path=REF) and set reference.source=file reference.path=DIR, or use strategy.token.scope=sequence"
        )
    if (needs.base_loss or needs.token_scores) and source == "self":
        raise ConfigError(
            f"{what} scores base - reference losses and the base is the starting model: reference.source=self "
            "would score 0 everywhere; set reference.source=path reference.path=DIR (or file)"
        )


def path_reference_from_config(cfg: Any, policy):
    """The ``reference.path`` model as a frozen :class:`~qtune.pruning.reference.Reference`."""
    from qtune.models.reference_model import load_reference_model
    from qtune.pruning.reference import path_reference

    path = reference_of(cfg)[1]
    module, info = load_reference_model(path, policy)
    return path_reference(module, path, info)


def build_token_step(cfg: Any, strategy, model, bundle, num_params: int):
    """The run's :class:`~qtune.pruning.token_step.TokenStep` (None without a token rule or
    for a classifier), its reference loaded (call before training: ``self`` is the model as
    it is now). A loss file is checked against the data; TokenCleaning's global threshold is
    taken from it unless ``strategy.token.threshold`` is set."""
    rule = getattr(strategy, "token_rule", None)
    if rule is None or bundle.task != "sft":
        return None
    from qtune.pruning.reference import self_reference
    from qtune.pruning.token_step import TokenStep

    needs = rule.needs()
    source, path = reference_of(cfg)
    reference = base = losses = None
    if needs.reference_model or needs.base_loss or needs.token_scores:
        if source == "file":
            losses = open_loss_file(path, bundle)
        elif source == "self":
            reference = self_reference(model)
        else:
            reference = path_reference_from_config(cfg, model)
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
        fused_head=bool(cfg.model.get("fused_head", False)),
        backend=None,
    )


def open_loss_file(path, bundle):
    from qtune.data.fingerprint import data_fingerprint
    from qtune.pruning.token_loss_file import TokenLossFile

    losses = TokenLossFile(path)
    lengths = [len(bundle.train[i]["input_ids"]) for i in range(len(bundle.train))]
    losses.check(data_fingerprint(bundle), lengths)
    return losses


def tokencleaning_threshold(losses, keep_ratio: float) -> float:
    """The global threshold over every response token's base − reference score in the file
    (``qtune.strategies.token_scores.global_threshold``: keep_ratio of them score at least it)."""
    from qtune.strategies.token_scores import global_threshold

    losses.require("base_loss", "TokenCleaning's score is base - reference")
    losses.require("ref_loss", "TokenCleaning's score is base - reference")
    values = losses.response_values(lambda c: c["base_loss"] - c["ref_loss"])
    import torch

    return global_threshold(torch.from_numpy(values), keep_ratio)
