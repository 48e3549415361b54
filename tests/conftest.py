"""Shared fixtures: compose qtune's Hydra config in-process, fast settings, offline wandb."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

FAST = [
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "kernels.backend=torch",
]


def compose(overrides: list[str], config_name: str = "train"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="qtune.conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(overrides, name="run")`` → a composed config whose run_dir is under tmp_path."""

    def _make(overrides: list[str], name: str = "run"):
        return compose(FAST + [f"run_dir={tmp_path / name}"] + list(overrides))

    return _make
