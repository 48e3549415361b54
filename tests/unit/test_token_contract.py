"""The token-rule contract: registry, declarations, yamls under conf/strategy/token/ composed
with any sample strategy, and the loss reduction shared by every rule."""

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, compose
from qtune.strategies import (
    TokenInputs,
    TokenRule,
    build_token_rule,
    get_token_rule_class,
    register_token_rule,
    token_rule_names,
)
from qtune.strategies.token_base import decision
from qtune.strategies.token_registry import _TOKEN_RULES

CONF = REPO / "conf" / "strategy" / "token"
RULES = ["random", "ppl", "rho1", "tokencleaning", "dft", "eaft", "asft"]


def test_builtin_rules_are_registered():
    assert set(RULES) <= set(token_rule_names())
    with pytest.raises(KeyError, match="strategy.token.name"):
        get_token_rule_class("nope")


@pytest.mark.parametrize("name", RULES)
def test_each_rule_has_a_yaml_that_composes_with_any_strategy(name):
    yaml = OmegaConf.load(CONF / f"{name}.yaml")
    assert yaml.name == name
    assert set(get_token_rule_class(name).ratio_keys) <= set(yaml)
    cfg = compose(["strategy=random", f"+strategy/token={name}"])
    assert cfg.strategy.name == "random" and cfg.strategy.token.name == name
    params = OmegaConf.to_container(cfg.strategy.token, resolve=True)
    rule = build_token_rule(params.pop("name"), seed=1, **params)
    assert rule.name == name and rule.needs().scope == rule.scope


def test_declared_needs():
    needs = {n: build_token_rule(n).needs() for n in RULES}
    assert [n for n in RULES if needs[n].reference_model] == ["rho1", "asft"]
    assert needs["eaft"].statistics == ("loss", "topk_entropy") and needs["eaft"].top_k == 20
    assert needs["dft"].statistics == ("loss", "p_label") and needs["asft"].reference_kl == "ref_policy"
    assert needs["tokencleaning"].token_scores and needs["rho1"].scope == "batch"
    kinds = {n: get_token_rule_class(n).kind for n in RULES}
    assert [n for n in RULES if kinds[n] == "reweight"] == ["dft", "eaft", "asft"]


@pytest.mark.parametrize(
    "option,value,match",
    [
        ("keep_ratio", 0.0, "strategy.token.keep_ratio"),
        ("keep_ratio", "half", "strategy.token.keep_ratio"),
        ("scope", "global", "strategy.token.scope"),
        ("keep_rate", 0.5, "unknown option"),
    ],
)
def test_bad_options_name_the_config_key(option, value, match):
    with pytest.raises(ValueError, match=match):
        build_token_rule("rho1", **{option: value})


def test_bad_declarations_fail_at_registration():
    with pytest.raises(TypeError, match="statistics"):

        @register_token_rule("bad_stats_test")
        class Bad(TokenRule):
            statistics = ("iq",)

    with pytest.raises(TypeError, match="top_k"):

        @register_token_rule("bad_topk_test")
        class BadK(TokenRule):
            statistics = ("topk_entropy",)

    assert "bad_stats_test" not in _TOKEN_RULES and "bad_topk_test" not in _TOKEN_RULES


def test_a_third_party_rule_registers_and_builds():
    @register_token_rule("first_token_test")
    class FirstToken(TokenRule):
        scope = "sequence"

        def apply(self, inputs):
            first = inputs.response_mask & (inputs.response_mask.long().cumsum(-1) == 1)
            return decision(first.float(), inputs.response_mask, "kept", reweights=False)

    try:
        rule = build_token_rule("first_token_test")
        resp = torch.tensor([[False, True, True]])
        loss = torch.tensor([[9.0, 2.0, 4.0]])
        assert float(rule.apply(TokenInputs(loss=loss, response_mask=resp)).reduce(loss)) == 2.0
    finally:
        _TOKEN_RULES.pop("first_token_test", None)


def test_reduce_all_dropped_and_infinite_dropped_losses():
    """All tokens dropped: loss 0 with a zero gradient; a dropped token's inf loss (a masked
    label logit) stays out of the sum instead of turning it into NaN."""
    loss = torch.tensor([[1.0, float("inf")]], requires_grad=True)
    resp = torch.tensor([[True, True]])
    d = decision(torch.tensor([[1.0, 0.0]]), resp, "kept", reweights=False)
    assert float(d.reduce(loss).detach()) == 1.0
    none = decision(torch.zeros(1, 2), resp, "kept", reweights=False)
    out = none.reduce(loss)
    out.backward()
    assert float(out.detach()) == 0.0 and torch.equal(loss.grad, torch.zeros(1, 2))
    off = decision(torch.ones(1, 2), torch.tensor([[True, False]]), "response", reweights=True)
    assert off.weights.tolist() == [[1.0, 0.0]] and int(off.tokens_trained) == 1
