"""End-to-end ``qtune-train`` runs on scikit-learn's digits (the one-token case)."""

import csv
import json

import pytest

from qtune.train import run

SUMMARY_KEYS = {
    "strategy",
    "seed",
    "epochs",
    "train_samples_total",
    "samples_trained",
    "tokens_trained",
    "scoring_forward_tokens",
    "flops_estimate",
    "wall_time_s",
    "train_time_s",
    "realised_keep_ratio",
    "eval",
}


def test_full_run_writes_summary_metrics_and_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg(["experiment=digits", "epochs=4"], "full")
    summary = run(cfg)
    run_dir = tmp_path / "full"
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(on_disk)
    n = on_disk["train_samples_total"]
    assert on_disk["samples_trained"] == 4 * n  # every sample, every epoch
    assert on_disk["tokens_trained"] == 4 * n  # one label per sample
    assert on_disk["realised_keep_ratio"] == pytest.approx(1.0)
    assert on_disk["flops_estimate"] == pytest.approx(6 * on_disk["num_params"] * 4 * n)
    assert 0.8 <= on_disk["eval"]["accuracy"] <= 1.0 and on_disk["eval"]["loss"] > 0
    assert summary["eval"] == on_disk["eval"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert any(r.get("eval/loss") for r in rows) and any(r.get("train/loss") for r in rows)


def test_random_half_trains_half_the_samples_and_loads_no_other(make_cfg, monkeypatch):
    from qtune.data.digits import ClassifyDataset

    loads: dict[int, int] = {}  # dataset size -> items loaded from datasets of that size
    get_item = ClassifyDataset.__getitem__

    def counting_get_item(self, idx):
        loads[len(self)] = loads.get(len(self), 0) + 1
        return get_item(self, idx)

    monkeypatch.setattr(ClassifyDataset, "__getitem__", counting_get_item)
    common = ["experiment=digits", "epochs=8", "batch_size=32"]
    full = run(make_cfg(common + ["strategy=full"], "full"))
    n = full["train_samples_total"]
    assert loads.pop(n) == 8 * n
    half = run(make_cfg(common + ["strategy=random", "strategy.keep_ratio=0.5"], "half"))
    assert half["samples_trained"] == 8 * round(0.5 * n)
    assert half["realised_keep_ratio"] == pytest.approx(round(0.5 * n) / n)
    assert half["flops_estimate"] == pytest.approx(full["flops_estimate"] * round(0.5 * n) / n)
    # a half-length epoch never loads the skipped items: that is where the time goes
    assert loads[n] == half["samples_trained"]
    hashes = {e["plan_hash"] for e in half["epochs_detail"]}
    assert len(hashes) == 8  # a fresh subset each epoch


def test_finished_run_directory_is_not_overwritten(make_cfg):
    cfg = make_cfg(["experiment=digits", "epochs=1"], "once")
    run(cfg)
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        run(cfg)


def test_wandb_logger_runs_offline(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    s = run(make_cfg(["experiment=digits", "epochs=1", "logger=wandb"], "wb"))
    assert s["eval"]["accuracy"] > 0
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert runs, "an offline wandb run directory is written in the run directory"
    assert (tmp_path / "wb" / "metrics.csv").is_file()  # the CSV log is kept alongside
