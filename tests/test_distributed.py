"""Two CPU processes (gloo): plans, shards and score stores agree across ranks."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.distributed


def _train(args, run_dir, cwd):
    env = dict(os.environ, WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "qtune.train", "trainer=ddp_cpu", "trainer.devices=2",
           "kernels.backend=torch", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={run_dir}", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def test_two_ranks_train_the_plan_once_and_agree(tmp_path):
    s = _train(["experiment=digits", "epochs=2", "strategy=random", "strategy.keep_ratio=0.5",
                "export_plan=true"], tmp_path / "ddp", tmp_path)
    n = s["train_samples_total"]
    planned = round(0.5 * n)
    for e, entry in enumerate(s["epochs_detail"]):
        assert entry["world_size"] == 2
        # both ranks' shards together: the plan, plus at most one padded repeat
        assert planned <= entry["samples_trained"] <= planned + 1
        exported = json.loads((tmp_path / "ddp" / "plans" / f"epoch_{e:03d}.json").read_text())
        assert len(exported["sample_ids"]) == planned and exported["plan_hash"] == entry["plan_hash"]
    # the per-epoch cross-rank checks (same plan, same score store) ran and passed
    assert s["eval"]["accuracy"] > 0.3


@pytest.mark.parametrize("name", ["el2n", "ccs", "infobatch", "seta", "rs2", "qtuning"])
def test_every_strategy_agrees_across_ranks(tmp_path, name):
    """The run itself checks, every epoch, that both ranks hold the same plan and the same
    gathered score store (it stops with an error otherwise); scoring passes are sharded."""
    s = _train(["experiment=digits", "epochs=3", f"strategy={name}"], tmp_path / name, tmp_path)
    assert all(e["world_size"] == 2 for e in s["epochs_detail"])
    n = s["train_samples_total"]
    if name in ("el2n", "ccs"):  # one sharded scoring pass over every sample, counted once
        assert n <= s["scoring_forward_tokens"] <= n + 1
    if name == "qtuning":  # per-rank batch decisions over both ranks' micro-batches
        assert abs(s["realised_keep_ratio"] - 0.25) < 0.1


def test_sharded_scoring_pass_equals_one_process(tmp_path):
    """EL2N scored at epoch 0 (initial model, the same on one rank or two): the two-rank
    gathered scores equal one process's, so both pick the same subset."""
    import numpy as np

    args = ["experiment=digits", "epochs=1", "strategy=el2n", "strategy.warmup_epochs=0",
            "strategy.keep_ratio=0.5", "model.dropout=0.0", "export_plan=true"]
    two = _train(args, tmp_path / "two", tmp_path)
    env = dict(os.environ, WANDB_MODE="offline")
    res = subprocess.run([sys.executable, "-m", "qtune.train", *args, "kernels.backend=torch",
                          "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'one'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert two["epochs_detail"][0]["plan_hash"] == one["epochs_detail"][0]["plan_hash"]
    selected = json.loads((tmp_path / "one" / "plans" / "epoch_000.json").read_text())["sample_ids"]
    s1, s2 = np.load(tmp_path / "one" / "scores.npz"), np.load(tmp_path / "two" / "scores.npz")
    untouched = np.ones(len(s1["sample_id"]), dtype=bool)
    untouched[selected] = False  # not trained after the scoring pass: still its values
    assert 0 < untouched.sum() < len(untouched)
    np.testing.assert_allclose(s1["el2n"][untouched], s2["el2n"][untouched], rtol=1e-5, atol=1e-6)
