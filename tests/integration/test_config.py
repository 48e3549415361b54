"""The Hydra app: composition, validation before work, the command line."""

import os
import subprocess
import sys

import pytest

from qtune.train import run, validate


def test_default_config_composes(make_cfg):
    cfg = make_cfg([])
    assert cfg.model.name == "tiny_llama" and cfg.data.name == "embedded"
    assert cfg.strategy.name == "full" and cfg.task == "sft"


def test_experiment_overrides_several_groups(make_cfg):
    cfg = make_cfg(["experiment=digits"])
    assert (cfg.model.name, cfg.data.name, cfg.task) == ("mlp", "digits", "classify")


def test_unknown_strategy_lists_registered_names(make_cfg):
    cfg = make_cfg(["strategy=random", "strategy.name=nope"])
    with pytest.raises(ValueError) as err:
        validate(cfg)
    assert "nope" in str(err.value) and "full" in str(err.value) and "random" in str(err.value)


def test_ratio_out_of_range_names_config_key_before_any_work(make_cfg, tmp_path):
    cfg = make_cfg(["experiment=digits", "strategy=random", "strategy.keep_ratio=1.5"], "bad")
    with pytest.raises(ValueError, match=r"strategy\.keep_ratio"):
        run(cfg)
    assert not (tmp_path / "bad").exists()  # nothing half-written


def _cli(args, cwd):
    env = dict(os.environ, HYDRA_FULL_ERROR="0", WANDB_MODE="offline")
    return subprocess.run(
        [sys.executable, "-m", "qtune.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_prints_composed_config(tmp_path):
    res = _cli(["--cfg", "job", "strategy=random", "strategy.keep_ratio=0.25"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "keep_ratio: 0.25" in res.stdout and "name: random" in res.stdout


def test_cli_unknown_option_is_hydra_error(tmp_path):
    res = _cli(["strategy.no_such_key=1", f"hydra.run.dir={tmp_path / 'x'}"], tmp_path)
    assert res.returncode != 0
    assert "no_such_key" in res.stderr


@pytest.mark.slow
def test_cli_multirun_runs_each_job_in_its_own_directory(tmp_path):
    res = _cli(
        [
            "-m",
            "experiment=digits",
            "epochs=1",
            "kernels.backend=torch",
            "trainer.enable_progress_bar=false",
            "strategy=full,random",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "sweep" / "0" / "summary.json").is_file()
    assert (tmp_path / "sweep" / "1" / "summary.json").is_file()
