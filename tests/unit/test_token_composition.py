"""One check for every trainer: qtune-train's ``strategy.token`` and the HF mixin's
``pruning_token`` accept and refuse the same rules, each message in its own keys."""

import pytest

from qtune.config.declared import ConfigError
from qtune.config.schema import token_rule_from_config
from qtune.hf.token_rules import attach_token_rule
from qtune.pruning.token_composition import (
    StepInputs,
    TokenKeys,
    compose_token_rule,
    missing_inputs,
    token_rule_record,
)
from qtune.strategies import build_strategy
from qtune.strategies.token_registry import build_token_rule, token_rule_names

CASES = [(name, {}) for name in token_rule_names()] + [
    ("ppl", {"bogus": 1}),
    ("ppl", {"keep_ratio": 1.5}),
    ("random", {"scope": "global"}),
    ("tokencleaning", {"scope": "sequence"}),
    ("nope", {}),
]


def outcome(fn):
    try:
        return "ok", fn().name
    except ValueError as exc:
        return "refused", str(exc)


def in_hf_keys(message: str) -> str:
    return TokenKeys("pruning_token", "pruning_token_options[{!r}]", "pruning_token").rename(message)


@pytest.mark.parametrize("strategy", ["random", "qtuning"])
@pytest.mark.parametrize("name, options", CASES)
def test_both_trainers_accept_and_refuse_the_same_rules(strategy, name, options):
    train = outcome(lambda: token_rule_from_config(build_strategy(strategy), {"name": name, **options}, seed=0))
    hf_strategy = build_strategy(strategy)
    hf = outcome(lambda: attach_token_rule(hf_strategy, name, options, seed=0) and hf_strategy.token_rule)
    assert train[0] == hf[0]
    if train[0] == "refused":
        assert hf[1] == in_hf_keys(train[1]).replace("strategy.token=", "pruning_token=")
        assert "strategy.token" not in hf[1]
    else:
        assert train[1] == hf[1] == name
    runnable = strategy == "random" and not options and name in ("random", "ppl", "dft")
    assert (train[0] == "ok") == runnable


def test_a_qtune_train_refusal_is_a_config_error():
    with pytest.raises(ConfigError, match="strategy.token='rho1' needs a reference model"):
        token_rule_from_config(build_strategy("random"), {"name": "rho1"}, seed=0)


def test_what_a_step_provides_decides_what_runs():
    rho1, eaft = build_token_rule("rho1").needs(), build_token_rule("eaft").needs()
    assert missing_inputs(rho1) == ["a reference model"]
    assert missing_inputs(rho1, StepInputs(reference_model=True)) == []
    assert missing_inputs(eaft) == ["top-20 entropies"]
    rule = compose_token_rule(build_strategy("full"), "rho1", seed=3, provided=StepInputs(reference_model=True))
    assert (rule.name, rule.seed) == ("rho1", 3)


def test_the_record_holds_the_name_and_every_option():
    rule = build_token_rule("ppl", keep_ratio=0.25, lam=0.0)
    assert token_rule_record(rule) == {"token": {"name": "ppl", "keep_ratio": 0.25, "lam": 0.0, "scope": "sequence"}}
    assert token_rule_record(None) == {}


def test_a_composed_rule_keeps_its_state_through_a_checkpoint():
    from qtune.pruning.core import PruningCore

    def strategy():
        s = build_strategy("random", keep_ratio=0.5)
        s.token_rule = build_token_rule("tokencleaning")
        return s

    saved = strategy()
    saved.token_rule.set_threshold(0.7)  # set before training, from the score file
    state = PruningCore(saved, num_samples=8).state_dict()
    resumed = strategy()
    PruningCore(resumed, num_samples=8).load_state_dict(state)
    assert resumed.token_rule.threshold == 0.7
