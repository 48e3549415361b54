"""Token rules composed with a sample strategy in qtune-train (``+strategy/token=NAME``): the
measured token keep ratio is the configured one, and what cannot run yet is refused by key."""

import pytest
from qtune.config.declared import ConfigError
from qtune.train import run


@pytest.mark.parametrize("rule", ["random", "ppl"])
def test_random_samples_with_a_token_rule_train_the_configured_share(make_cfg, tiny_sft, rule):
    full = run(make_cfg(tiny_sft + ["strategy=random", "strategy.keep_ratio=0.5"], "samples"))
    both = run(
        make_cfg(
            tiny_sft
            + [
                "strategy=random",
                "strategy.keep_ratio=0.5",
                f"+strategy/token={rule}",
                "strategy.token.keep_ratio=0.5",
            ],
            "tokens",
        )
    )
    assert both["samples_trained"] == full["samples_trained"]  # the same samples
    share = both["tokens_trained"] / full["tokens_trained"]  # and half of their response tokens
    assert 0.4 <= share <= 0.6


def test_dft_trains_every_response_token(make_cfg, tiny_sft):
    full = run(make_cfg(tiny_sft, "full"))
    dft = run(make_cfg(tiny_sft + ["+strategy/token=dft"], "dft"))
    assert (full["token_rule"], dft["token_rule"]) == (None, "dft")
    assert dft["tokens_trained"] == full["tokens_trained"]  # a reweighted token is trained
    assert dft["eval"]["loss"] != full["eval"]["loss"]  # but the loss it trained on differs


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["strategy=qtuning", "+strategy/token=dft"], "plans tokens itself"),
        (["+strategy/token=rho1"], "needs a reference model"),
        (["+strategy/token=dft", "+strategy.token.bogus=1"], "bogus"),
    ],
)
def test_what_cannot_compose_yet_is_refused_by_key(make_cfg, tiny_sft, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(make_cfg(tiny_sft + overrides, "refused"))
