import pytest
import torch

from qtune.strategies import (
    EpochContext,
    EpochPlan,
    PruningStrategy,
    build_strategy,
    get_strategy_class,
    register_strategy,
    registered_names,
)
from qtune.strategies.registry import _REGISTRY


def test_builtin_strategies_are_registered():
    names = registered_names()
    assert {"full", "random"} <= set(names)
    assert get_strategy_class("random").name == "random"


def test_unknown_name_lists_registered_names():
    with pytest.raises(KeyError) as err:
        get_strategy_class("no_such_strategy")
    msg = str(err.value)
    assert "no_such_strategy" in msg and "random" in msg and "full" in msg


def test_unknown_option_names_the_key_and_accepted_ones():
    with pytest.raises(ValueError, match="keep_ratio") as err:
        build_strategy("random", seed=0, keep_ration=0.5)
    assert "keep_ration" in str(err.value)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, "half"])
def test_ratio_out_of_range_names_the_config_key(bad):
    with pytest.raises(ValueError, match=r"strategy\.keep_ratio"):
        build_strategy("random", seed=0, keep_ratio=bad)


def test_decorator_registers_a_third_party_strategy():
    @register_strategy("every_other_test")
    class EveryOther(PruningStrategy):
        def epoch_plan(self, ctx):
            return EpochPlan(torch.arange(0, ctx.num_samples, 2))

    try:
        s = build_strategy("every_other_test", seed=3)
        assert s.seed == 3 and "every_other_test" in registered_names()
        ctx = EpochContext(epoch=0, max_epochs=1, num_samples=5, seed=3, scores=None)
        assert s.epoch_plan(ctx).sample_ids.tolist() == [0, 2, 4]
    finally:
        _REGISTRY.pop("every_other_test", None)


def test_entry_point_group_is_read(monkeypatch):
    import qtune.strategies.registry as reg

    class Plugin(PruningStrategy):
        def epoch_plan(self, ctx):
            return EpochPlan(torch.arange(ctx.num_samples))

    class FakeEP:
        name = "plugin_test"

        def load(self):
            return Plugin

    monkeypatch.setattr(reg, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(reg, "entry_points", lambda group: [FakeEP()] if group == reg.ENTRY_POINT_GROUP else [])
    try:
        assert "plugin_test" in registered_names()
        assert get_strategy_class("plugin_test") is Plugin
    finally:
        _REGISTRY.pop("plugin_test", None)


def test_random_plan_size_and_determinism():
    s = build_strategy("random", seed=7, keep_ratio=0.3)

    def ctx(e):
        return EpochContext(epoch=e, max_epochs=3, num_samples=101, seed=7, scores=None)

    a, b = s.epoch_plan(ctx(1)).sample_ids, s.epoch_plan(ctx(1)).sample_ids
    assert a.numel() == round(0.3 * 101) and torch.equal(a, b)
    assert a.unique().numel() == a.numel() and int(a.max()) < 101
    assert not torch.equal(a, s.epoch_plan(ctx(2)).sample_ids)  # a fresh subset per epoch


def test_static_random_draws_one_subset_for_the_whole_run():
    dynamic = build_strategy("random", seed=7, keep_ratio=0.3)
    static = build_strategy("random", seed=7, keep_ratio=0.3, static=True)

    def ctx(e):
        return EpochContext(epoch=e, max_epochs=5, num_samples=101, seed=7, scores=None)

    plans = [static.epoch_plan(ctx(e)).sample_ids for e in range(5)]
    assert all(torch.equal(plans[0], p) for p in plans[1:])
    assert plans[0].numel() == round(0.3 * 101)
    # the static subset is the dynamic one of epoch 0; later dynamic epochs differ from it
    assert torch.equal(plans[0], dynamic.epoch_plan(ctx(0)).sample_ids)
    assert not torch.equal(plans[0], dynamic.epoch_plan(ctx(3)).sample_ids)
    # a different seed draws a different subset
    other = build_strategy("random", seed=8, keep_ratio=0.3, static=True)
    assert not torch.equal(plans[0], other.epoch_plan(ctx(0)).sample_ids)
