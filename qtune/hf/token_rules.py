"""Token rules in the Hugging Face mixin: ``pruning_token`` / ``pruning_token_options``.

The rule is built and refused exactly as ``qtune-train``'s ``strategy.token``
(:func:`qtune.pruning.token_composition.compose_token_rule`), with messages naming the mixin's
arguments, and hung on the strategy as ``strategy.token_rule``, where the shared training step
(:func:`qtune.pruning.train_step.train_step`) applies it to every trained row: the loss is the
rule's (kept tokens, or reweighted ones), and ``tokens_trained`` books the tokens it trains
(a reweighted token is trained). A rule that compares with a reference reads the one
``pruning_reference`` declares (``qtune.hf.reference``). The rule's name and options join the
strategy's settings in the pruning state, so a resume with another rule is refused; a random
rule draws from (seed, epoch, optimiser step, sample id), so a resumed run masks the same tokens.
"""

from __future__ import annotations

from typing import Any

from qtune.pruning.token_composition import EVERY_INPUT, TokenKeys, compose_token_rule, token_rule_record
from qtune.strategies.token_base import TokenRule

HF_KEYS = TokenKeys(rule="pruning_token", option="pruning_token_options[{!r}]", name="pruning_token")


def attach_token_rule(
    strategy, token: str | TokenRule | None, options: dict[str, Any] | None, seed: int
) -> dict[str, Any]:
    """Compose ``token`` with ``strategy`` (a rule already on the strategy is checked the same
    way); returns the rule's record for the run's settings (empty without one)."""
    if token is None:
        if options:
            raise ValueError("pruning_token_options given without pruning_token (the rule's name, or a TokenRule)")
        token = getattr(strategy, "token_rule", None)
        if token is None:
            return {}
    elif getattr(strategy, "token_rule", None) not in (None, token):
        raise ValueError(
            f"pruning_token={getattr(token, 'name', token)!r}: the strategy already carries token rule "
            f"{strategy.token_rule.name!r}; give one of them"
        )
    rule = compose_token_rule(strategy, token, options, seed=seed, keys=HF_KEYS, provided=EVERY_INPUT)
    strategy.token_rule = rule
    return token_rule_record(rule)
