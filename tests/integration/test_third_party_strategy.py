"""A strategy from another distribution: installed into a temporary directory on sys.path
(a package plus its ``.dist-info`` with an ``entry_points.txt``), found through the
``qtune.strategies`` entry-point group and run by name, with no edit to qtune and no yaml."""

import importlib
import sys
import textwrap

import pytest

import qtune.strategies.registry as reg
from qtune.train import run

PLUGIN = '''
import torch
from qtune.strategies import EpochPlan, PruningStrategy


class EveryKth(PruningStrategy):
    """Visits the ids divisible by ``k``."""

    ratio_keys = {}
    statistics = ()

    def __init__(self, seed: int = 0, k: int = 2) -> None:
        super().__init__(seed)
        self.k = int(k)

    def epoch_plan(self, ctx):
        return EpochPlan(torch.arange(0, ctx.num_samples, self.k))
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """``throwaway-0.0.0`` installed the way pip lays out a wheel, visible to this process."""
    site = tmp_path / "site"
    (site / "throwaway_pkg").mkdir(parents=True)
    (site / "throwaway_pkg" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "throwaway-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text("[qtune.strategies]\nevery_kth_throwaway = throwaway_pkg:EveryKth\n")
    monkeypatch.syspath_prepend(str(site))  # also invalidates importlib's finder caches
    importlib.invalidate_caches()
    monkeypatch.setattr(reg, "_ENTRY_POINTS_LOADED", False)
    yield "every_kth_throwaway"
    reg._REGISTRY.pop("every_kth_throwaway", None)
    sys.modules.pop("throwaway_pkg", None)


def test_an_installed_third_party_strategy_runs_by_name(installed_plugin, make_cfg):
    assert installed_plugin in reg.registered_names()
    s = run(make_cfg(["experiment=digits", "epochs=2", f"strategy.name={installed_plugin}", "+strategy.k=3"]))
    n = s["train_samples_total"]
    assert s["strategy"] == installed_plugin
    assert [e["samples_trained"] for e in s["epochs_detail"]] == [-(-n // 3)] * 2
