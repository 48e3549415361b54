"""The ``reference:`` config block: the one reference model a run's token rule compares with,
checked against what the rule needs, and built into the run's ``TokenStep``.

``reference.source``: ``none``; ``self`` (the starting model: LoRA adapters disabled, else a
frozen copy); ``path`` (``reference.path``: an HF directory, a qtune run or its ``final/``);
``file`` (``reference.path``: per-token losses written by ``qtune-score token_losses.out=DIR``).
The checks and the build shared with the Hugging Face mixin are in
``qtune.pruning.reference_setup``; this module reads them from the config and names its keys.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional

from omegaconf import OmegaConf

from qtune.config.declared import ConfigError
from qtune.pruning.reference_setup import SOURCES, ReferenceRefusal, check_reference_source, reads_reference
from qtune.pruning.token_step import needs_step_extras


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
    if not reads_reference(needs):
        return
    if str(OmegaConf.select(cfg, "task", default="sft")) != "sft":
        raise ConfigError(f"strategy.token={rule.name!r} compares with a reference language model: it needs task=sft")
    try:
        check_reference_source(rule, reference_of(cfg)[0])
    except ReferenceRefusal as exc:
        raise ConfigError(str(exc)) from None


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
    it is now; ``qtune.pruning.reference_setup.token_step_for``). A loss file is checked
    against the data; TokenCleaning's global threshold is taken from it unless
    ``strategy.token.threshold`` is set."""
    rule = getattr(strategy, "token_rule", None)
    if rule is None or bundle.task != "sft":
        return None
    from qtune.data.fingerprint import data_fingerprint
    from qtune.pruning.reference_setup import open_loss_file, token_step_for

    source, path = reference_of(cfg)
    return token_step_for(
        rule,
        model,
        source=source,
        load_reference=lambda: path_reference_from_config(cfg, model),
        open_losses=lambda: open_loss_file(path, bundle.train, data_fingerprint(bundle)),
        num_params=num_params,
        fused_head=bool(cfg.model.get("fused_head", False)),
    )
