"""Shared fixtures: compose qtune's Hydra config in-process, fast settings, offline wandb."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]  # the repository root


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where CUDA is available (under TRITON_INTERPRET=1 Triton
    runs on the CPU, so they are skipped there too)."""
    import torch

    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


def tiny_sft_overrides(cache_dir) -> list[str]:
    """The embedded SFT task in seconds: a two-layer base pretrained for three steps."""
    return [
        f"model.cache_dir={cache_dir}",
        "model.hidden_size=32",
        "model.intermediate_size=64",
        "model.num_hidden_layers=2",
        "model.num_attention_heads=2",
        "model.num_key_value_heads=2",
        "model.base.steps=3",
        "model.base.batch_size=8",
        "model.base.warmup_steps=1",
        "model.base.eval_items=10",
        "data.num_train=120",
        "data.num_eval=30",
        "epochs=2",
        "batch_size=16",
        "eval_batch_size=64",
    ]


@pytest.fixture
def tiny_sft(tmp_path):
    return tiny_sft_overrides(tmp_path / "cache")


def crash(step: int | None = None, epoch_start: int | None = None, epoch_end: int | None = None):
    """A Lightning callback that simulates a crash: after optimiser step `step`, at the start
    of epoch `epoch_start`, or in on_train_epoch_end of `epoch_end` (after the pruning callback
    booked the epoch, before the checkpoint callback, which Lightning runs last, saves it)."""
    import lightning as L

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == step:
                raise RuntimeError("simulated crash")

        def on_train_epoch_start(self, trainer, *args):
            if trainer.current_epoch == epoch_start:
                raise RuntimeError("simulated crash")

        def on_train_epoch_end(self, trainer, *args):
            if trainer.current_epoch == epoch_end:
                raise RuntimeError("simulated crash")

    return Crash()
