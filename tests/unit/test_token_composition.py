"""One check for every trainer: qtune-train's ``strategy.token`` with ``reference.*`` and the HF
mixin's ``pruning_token`` with ``pruning_reference`` accept and refuse the same rules with the
same references, each message in its own keys."""

import dataclasses
from contextlib import nullcontext

import pytest
from omegaconf import OmegaConf

from qtune.config.declared import ConfigError
from qtune.config.reference import check_reference
from qtune.config.schema import token_rule_from_config
from qtune.hf.reference import HF_REFERENCE_KEYS, check_reference_argument
from qtune.hf.token_rules import attach_token_rule
from qtune.pruning.reference_setup import ReferenceKeys, ReferenceRefusal
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
EVERY_SOURCE = {"none", "self", "path", "file"}
# which references each rule runs with, from the methods' definitions (docs/strategies.md)
RUNS_WITH = {
    ("random", ""): EVERY_SOURCE,
    ("ppl", ""): EVERY_SOURCE,
    ("dft", ""): EVERY_SOURCE,
    ("eaft", ""): EVERY_SOURCE,  # its own top-K entropies: a reference is not read
    ("rho1", ""): {"self", "path", "file"},  # a reference loss per token: any reference
    ("asft", ""): {"self", "path"},  # a KL to the reference's whole distribution: no file
    ("tokencleaning", ""): {"file"},  # global: every token of the data set ranked, from a file
    ("tokencleaning", "sequence"): {"path", "file"},  # base - reference: the base is the start
}


def outcome(fn):
    try:
        return "ok", fn().name
    except ValueError as exc:
        return "refused", str(exc)


def in_hf_keys(message: str) -> str:
    """A qtune-train message with each of its keys spelt as the mixin spells it."""
    train, hf = ReferenceKeys(), HF_REFERENCE_KEYS
    for field in ("writer_base", "writer", "file", "model", "self_", "declared"):
        message = message.replace(getattr(train, field), getattr(hf, field))
    message = TokenKeys("pruning_token", "pruning_token_options[{!r}]", "pruning_token").rename(message)
    return message.replace("strategy.token=", "pruning_token=")


@pytest.fixture(scope="module")
def declared(tmp_path_factory):
    """source -> (qtune-train's reference config, the mixin's pruning_reference)."""
    d = str(tmp_path_factory.mktemp("ref"))
    return {
        "none": ({"source": "none"}, None),
        "self": ({"source": "self"}, "self"),
        "path": ({"source": "path", "path": d}, d),
        "file": ({"source": "file", "path": d}, {"source": "file", "path": d}),
    }


@pytest.mark.parametrize("source", sorted(EVERY_SOURCE))
@pytest.mark.parametrize("strategy", ["random", "qtuning"])
@pytest.mark.parametrize("name, options", CASES)
def test_both_trainers_accept_and_refuse_the_same_rules(declared, source, strategy, name, options):
    train_ref, hf_ref = declared[source]
    cfg = OmegaConf.create({"task": "sft", "data": {"packing": False}, "reference": train_ref})

    def train():
        rule = token_rule_from_config(build_strategy(strategy), {"name": name, **options}, seed=0)
        check_reference(cfg, rule)
        return rule

    def hf():
        s = build_strategy(strategy)
        attach_token_rule(s, name, options, seed=0)
        unread = source != "none" and name not in ("rho1", "asft", "tokencleaning")
        with pytest.warns(UserWarning, match="is not loaded") if unread else nullcontext():
            check_reference_argument(s.token_rule, hf_ref)
        return s.token_rule

    got_train, got_hf = outcome(train), outcome(hf)
    assert got_train[0] == got_hf[0]
    if got_train[0] == "refused":
        assert got_hf[1] == in_hf_keys(got_train[1])
        assert not any(k in got_hf[1] for k in ("strategy.token", "reference.source", "qtune-score"))
        assert "pruning_" not in got_train[1]
    else:
        assert got_train[1] == got_hf[1] == name
    runs_with = RUNS_WITH.get((name, options.get("scope", "")), set()) if set(options) <= {"scope"} else set()
    assert (got_train[0] == "ok") == (strategy == "random" and source in runs_with)


def test_a_rule_without_its_reference_is_refused_by_each_trainer_naming_its_key(tmp_path):
    from conftest import compose

    from qtune.config.schema import validate_config

    with pytest.raises(
        ConfigError, match=r"strategy.token='rho1' needs a reference model \(config key reference.source\)"
    ):
        validate_config(compose(["+strategy/token=rho1"]))
    assert validate_config(compose(["+strategy/token=rho1", "reference.source=self"])).token_rule.name == "rho1"
    rule = build_token_rule("rho1")
    with pytest.raises(
        ReferenceRefusal, match=r"pruning_token='rho1' needs a reference model \(argument pruning_reference\)"
    ) as refused:
        check_reference_argument(rule, None)
    assert refused.value.reason == "missing"
    assert check_reference_argument(rule, "self").source == "self"
    assert dataclasses.asdict(check_reference_argument(rule, {"source": "path", "path": str(tmp_path)})) == {
        "source": "path",
        "path": str(tmp_path),
        "module": None,
    }


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
