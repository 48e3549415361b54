"""The strategy contract: declarations on PruningStrategy, checked when a class registers and
when an instance is built, and read by the engine, the grid runner and the report."""

import dataclasses
import pkgutil
import sys

import pytest
from omegaconf import OmegaConf

import qtune.strategies as strategies
from qtune.pruning.statistics_store import FIELDS, StatisticsStore
from qtune.strategies import (
    BatchStats,
    PruningStrategy,
    build_strategy,
    get_strategy_class,
    register_strategy,
    registered_names,
)
from qtune.strategies.contract import SAMPLE_STATISTICS, STATISTICS, TOKEN_STATISTICS
from qtune.strategies.registry import _REGISTRY
from conftest import REPO

CONF = REPO / "conf" / "strategy"


def test_every_module_of_the_package_is_imported():
    for mod in pkgutil.iter_modules(strategies.__path__):
        assert f"qtune.strategies.{mod.name}" in sys.modules


@pytest.mark.parametrize("name", registered_names())
def test_builtin_ratio_knobs_are_options_of_their_yaml(name):
    keys = get_strategy_class(name).ratio_keys
    yaml = OmegaConf.load(CONF / f"{name}.yaml")
    assert set(keys) <= set(yaml) and all(kind in ("keep", "prune", "shift") for kind in keys.values())
    assert bool(keys) == (name != "full")


def test_statistics_vocabulary_is_what_the_engine_provides():
    store = StatisticsStore(2)
    assert set(FIELDS) <= set(SAMPLE_STATISTICS)
    assert all(hasattr(store, s) for s in SAMPLE_STATISTICS)
    batch_fields = {f.name for f in dataclasses.fields(BatchStats)}
    assert set(TOKEN_STATISTICS) <= batch_fields
    assert {f"sample_{s}" for s in ("loss", "ppl", "entropy")} <= batch_fields
    for name in registered_names():
        assert set(build_strategy(name).statistics) <= set(STATISTICS)


def test_declarations_set_from_options_are_those_the_engine_reads():
    qt = build_strategy("qtuning", level="epoch", entropy_scope="all", loss_denominator="all_attended")
    assert (qt.uses_batch_plan, qt.batch_scoring, qt.entropy_scope, qt.loss_denominator) == (
        True,
        "reuse",
        "all",
        "all_attended",
    )
    assert build_strategy("ccs", score_column="aum").statistics == ("aum",)
    plain = build_strategy("random")
    assert (plain.uses_batch_plan, plain.batch_scoring, plain.loss_denominator) == (False, "separate", "response")


@pytest.mark.parametrize(
    "attr,value",
    [
        ("uses_batch_plan", "yes"),
        ("batch_scoring", "twice"),
        ("entropy_scope", "prompt"),
        ("loss_denominator", "all"),
        ("statistics", "loss"),
        ("statistics", ("loss", "iq")),
        ("statistics", 5),
        ("ratio_keys", {"keep_ratio": "most"}),
        ("ratio_keys", {"fraction": "keep"}),
    ],
)
def test_an_invalid_declaration_fails_at_registration_naming_class_and_attribute(attr, value):
    cls = type(
        "BadDeclaration",
        (PruningStrategy,),
        {attr: value, "__init__": lambda self, seed=0, keep_ratio=0.5: PruningStrategy.__init__(self, seed)},
    )
    with pytest.raises(TypeError, match=rf"BadDeclaration\.{attr}=") as err:
        register_strategy("bad_declaration_test")(cls)
    assert "bad_declaration_test" not in _REGISTRY
    if value == {"fraction": "keep"}:
        assert "fraction" in str(err.value) and "__init__" in str(err.value)


def test_an_instance_declaration_is_checked_when_built():
    @register_strategy("bad_instance_test")
    class SetsScoring(PruningStrategy):
        def __init__(self, seed: int = 0, how: str = "reuse") -> None:
            super().__init__(seed)
            self.batch_scoring = how

    try:
        assert build_strategy("bad_instance_test").batch_scoring == "reuse"
        with pytest.raises(TypeError, match=r"SetsScoring\.batch_scoring='sideways'"):
            build_strategy("bad_instance_test", how="sideways")
    finally:
        _REGISTRY.pop("bad_instance_test", None)


def test_ratio_keys_are_read_only_once_registered():
    with pytest.raises(TypeError):
        get_strategy_class("random").ratio_keys["keep_ratio"] = "prune"


def test_grid_and_report_read_a_new_strategys_ratio_knobs(tmp_path):
    """A strategy registered at run time gets grid overrides and report labels from its
    declaration: no table in run_grid.py or report_collect.py to extend."""
    from script_module import load_script

    from qtune.report.collect import Run, group_points

    @register_strategy("half_pruner_test")
    class HalfPruner(PruningStrategy):
        ratio_keys = {"drop": "prune", "window": "shift"}

        def __init__(self, seed: int = 0, drop: float = 0.5, window: float = 0.0, mode: str = "a") -> None:
            super().__init__(seed)

    try:
        rg = load_script("run_grid")
        pts = rg.plan_grid("digits", ["half_pruner_test"], ["0.3", "0.5x0.5"], [0], ["same_epochs"], tmp_path)
        assert [p.run_dir.parent.name for p in pts] == ["half_pruner_test-keep0.3-same_epochs-e30"]
        assert "strategy.drop=0.7" in pts[0].overrides
        runs = [
            Run(
                tmp_path / f"r{i}",
                {"strategy": "half_pruner_test", "seed": 0, "epochs": 3},
                {
                    "data": {"name": "toy"},
                    "strategy": {"name": "half_pruner_test", "drop": d, "window": w, "mode": "a"},
                },
            )
            for i, (d, w) in enumerate([(0.5, 0.0), (0.7, 0.1)])
        ]
        points = group_points(runs)["toy"]
        assert [p.variant for p in points] == ["", ""]  # ratio knobs never split a variant
        assert points[1].label == "drop=0.7, window=0.1"
    finally:
        _REGISTRY.pop("half_pruner_test", None)


def test_a_plugin_with_a_bad_declaration_is_skipped_with_a_warning(monkeypatch):
    """A broken third-party package must not break qtune: its strategy is left out, and the
    warning names the entry point, the class and the attribute."""
    import qtune.strategies.registry as reg

    class BadPlugin(PruningStrategy):
        batch_scoring = "sometimes"

    class FakeEP:
        name = "bad_plugin_test"

        def load(self):
            return BadPlugin

    monkeypatch.setattr(reg, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(reg, "entry_points", lambda group: [FakeEP()])
    with pytest.warns(UserWarning, match=r"bad_plugin_test.*BadPlugin\.batch_scoring='sometimes'"):
        names = registered_names()
    assert "bad_plugin_test" not in names and "random" in names


def test_the_statistics_store_is_what_a_plan_may_read():
    """EpochContext.scores is typed by strategies' own protocol; the core's store fulfils it."""
    import typing

    from qtune.strategies.base import SampleStatistics

    store = StatisticsStore(3)
    assert isinstance(store, SampleStatistics)
    assert not isinstance(object(), SampleStatistics)
    hints = typing.get_type_hints(SampleStatistics)
    assert set(FIELDS) <= set(hints) and {"num_samples", "seen_epoch", "forgetting"} <= set(hints)
    assert {"ppl", "aum"} <= set(dir(SampleStatistics))
