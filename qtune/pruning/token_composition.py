"""A token rule composed with a sample strategy, built and checked alike for every trainer.

``qtune-train`` (``strategy.token``) and the Hugging Face mixin (``pruning_token``) both build
the rule through :func:`compose_token_rule`, so both refuse the same things: a strategy that
plans tokens itself (a batch plan: Q-Tuning), an unknown rule or option, and a rule whose
inputs the training step does not compute. :func:`missing_inputs` is the one place that says
what a step provides beyond the policy's own statistics; a trainer says what its step computes
with :class:`StepInputs` (qtune's two compute every input: :data:`EVERY_INPUT`). Messages name
the caller's keys (:class:`TokenKeys`), and the rule is attached as ``strategy.token_rule``, which
:func:`qtune.pruning.train_step.train_step` reads.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

from qtune.strategies.token_base import TokenNeeds, TokenRule
from qtune.strategies.token_registry import build_token_rule, check_token_contract, token_rule_names


@dataclass(frozen=True)
class StepInputs:
    """What a trainer's step computes for a token rule beyond the policy's per-token loss,
    entropy and label probability (always there)."""

    reference_model: bool = False  # a reference model's per-token loss / KL every step
    base_loss: bool = False  # the frozen initial model's per-token loss
    token_scores: bool = False  # per-token scores read from a file
    top_k: bool = False  # the top-K entropy kernel output


EVERY_INPUT = StepInputs(reference_model=True, base_loss=True, token_scores=True, top_k=True)
"""What qtune-train's and the mixin's steps compute (``qtune.pruning.token_step``): whether
the declared reference can give it is ``qtune.pruning.reference_setup``'s check."""


@dataclass(frozen=True)
class TokenKeys:
    """How a caller names the rule (``rule``), the key holding its name (``name``) and one of
    its options (``option``, a format of the option's name) in its messages."""

    rule: str = "strategy.token"
    option: str = "strategy.token.{}"
    name: str = "strategy.token.name"

    def rename(self, message: str) -> str:
        """A registry or rule message (written with qtune-train's keys) in this caller's keys."""
        message = message.replace("strategy.token.name", self.name)
        return re.sub(r"strategy\.token\.(<option>|\w+)", lambda m: self.option.format(m.group(1)), message)


def missing_inputs(needs: TokenNeeds, provided: StepInputs = StepInputs()) -> list[str]:
    """What a rule with ``needs`` would read that a step providing ``provided`` does not compute."""
    missing = []
    if needs.reference_model and not provided.reference_model:
        missing.append("a reference model")
    if needs.base_loss and not provided.base_loss:
        missing.append("base-model losses")
    if needs.token_scores and not provided.token_scores:
        missing.append("a token score file")
    if needs.top_k is not None and not provided.top_k:
        missing.append(f"top-{needs.top_k} entropies")
    return missing


def runnable_rule_names(provided: StepInputs = StepInputs()) -> list[str]:
    """Registered rules whose default options need nothing beyond ``provided``."""
    names = []
    for name in token_rule_names():
        try:
            rule = build_token_rule(name)
        except (TypeError, ValueError):  # a rule with a required option: not runnable by default
            continue
        if not missing_inputs(rule.needs(), provided):
            names.append(name)
    return names


def rule_options(rule: TokenRule) -> dict[str, Any]:
    """A built rule's options, read back from the attributes its constructor sets (for the
    run's records and the resume check)."""
    params = inspect.signature(type(rule).__init__).parameters
    return {p: getattr(rule, p) for p in params if p not in ("self", "seed") and hasattr(rule, p)}


def compose_token_rule(
    strategy,
    token: str | TokenRule,
    options: dict[str, Any] | None = None,
    *,
    seed: int,
    keys: TokenKeys = TokenKeys(),
    provided: StepInputs = StepInputs(),
) -> TokenRule:
    """The rule ``token`` (a registered name with ``options``, or a built rule) checked against
    ``strategy`` and against what the step computes; raises a ``ValueError`` naming ``keys``."""
    name = token.name if isinstance(token, TokenRule) else token
    if strategy.uses_batch_plan:
        raise ValueError(
            f"{keys.rule}={name!r}: strategy {strategy.name!r} plans tokens itself (its batch plan); "
            "compose token rules with a sample-level strategy"
        )
    if isinstance(token, TokenRule):
        if options:
            raise ValueError(f"{keys.rule} is a built token rule; its options go to its constructor, not here")
        check_token_contract(token)
        rule = token
    elif isinstance(token, str) and token:
        try:
            rule = build_token_rule(token, seed=seed, **dict(options or {}))
        except (KeyError, ValueError) as exc:
            raise ValueError(keys.rename(str(exc.args[0]))) from None
    else:
        raise ValueError(f"{keys.rule}={token!r}: expected a token rule name or a TokenRule")
    missing = missing_inputs(rule.needs(), provided)
    if missing:
        raise ValueError(
            f"{keys.rule}={name!r} needs {', '.join(missing)}, which training does not compute yet; "
            f"available now: {', '.join(runnable_rule_names(provided))}"
        )
    return rule


def token_rule_record(rule: TokenRule | None) -> dict[str, Any]:
    """``{"token": {"name": ..., options}}`` for a run's records (empty without a rule): the
    shape of qtune-train's ``strategy.token`` node."""
    return {} if rule is None else {"token": {"name": rule.name, **rule_options(rule)}}
