"""What a qtune-train run prints: each library line once, no deprecation or advertisement,
qtune's FLOPs estimate instead of Lightning's 0, a result table; the budget's progress bar."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

from conftest import tiny_sft_overrides

from qtune.lightning.console import QTuneProgressBar, result_rows


def test_a_default_run_prints_each_line_once_and_ends_with_its_result(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", COLUMNS="250")  # no wrapping
    run_dir = tmp_path / "run"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "qtune.train",
            *tiny_sft_overrides(tmp_path / "c"),
            "epochs=1",
            "kernels.backend=torch",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert out.count("GPU available") == 1  # Lightning's line, through Hydra's logger only
    for noise in (
        "deprecated",
        "Deprecat",
        "litlogger",
        "Total FLOPs",
        "Writing model shards",
        "Loading weights",
        "already configured with model summary",
    ):
        assert noise not in out, noise
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "FLOPs per token (qtune's estimate)" in out
    table = out[out.index("qtune: full, seed 0") :]
    assert f"{summary['flops_vs_full']:.3f}" in table and str(run_dir) in table
    assert f"{summary['eval']['exact_match']:.4f}" in table


def test_result_rows_of_a_budgeted_run():
    summary = {
        "eval": {"accuracy": 0.9171, "loss": 0.31, "per_class": [1]},
        "train_samples_total": 100,
        "epochs": 4,
        "epochs_run": 6,
        "samples_trained": 150,
        "realised_keep_ratio": 0.25,
        "tokens_trained": 150,
        "flops_vs_full": 0.4987,
        "budget": 0.5,
        "train_time_s": 12.34,
    }
    rows = dict(result_rows(summary, "out/run"))
    assert rows == {
        "eval accuracy": "0.9171",
        "eval loss": "0.3100",
        "samples trained": "150 of 100 x 6 epochs (0.25)",
        "tokens trained": "150",
        "FLOPs vs full": "0.499 (budget 0.5)",
        "train time": "12.3 s",
        "run directory": "out/run",
    }


def test_the_progress_bar_counts_the_epochs_the_budget_buys():
    budget = SimpleNamespace(planned_epochs=lambda epoch: epoch + 3, progress=0.4)
    bar = QTuneProgressBar(budget)
    assert bar._get_train_description(2) == "Epoch 2/4 (budget 40% spent)"


def test_result_rows_name_the_measured_token_keep_ratio_below_one():
    summary = {
        "eval": {},
        "train_samples_total": 100,
        "epochs": 1,
        "samples_trained": 100,
        "realised_keep_ratio": 1.0,
        "tokens_trained": 1100,
        "response_tokens": 2000,
        "token_keep_ratio": 0.55,
        "flops_vs_full": 1.0,
        "train_time_s": 1.0,
    }
    assert dict(result_rows(summary, "r"))["tokens trained"] == "1,100 of 2,000 response tokens (0.55)"
    full = summary | {"tokens_trained": 2000, "token_keep_ratio": 1.0}
    assert dict(result_rows(full, "r"))["tokens trained"] == "2,000"
