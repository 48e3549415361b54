"""``qtune-train`` on the embedded SFT task with a tiny base built into a temp cache."""

import json

from qtune.train import run


def test_pretrain_experiment_builds_the_base_once(make_cfg, tiny_sft, tmp_path):
    out = run(make_cfg(tiny_sft + ["experiment=pretrain_base"], "pre"))
    meta = json.loads((tmp_path / "cache" / "base" / out["base_path"].split("/")[-1] / "qtune_base.json").read_text())
    assert 0.0 <= meta["raw_exact_match"] <= 1.0 and meta["base"]["steps"] == 3
    again = run(make_cfg(tiny_sft + ["experiment=pretrain_base"], "pre2"))
    assert again["base_path"] == out["base_path"]


def test_full_sft_run_summary(make_cfg, tiny_sft, tmp_path):
    s = run(make_cfg(tiny_sft, "sft"))
    info = s["data_info"]
    n = s["train_samples_total"]
    assert n == 120 and s["samples_trained"] == 2 * n and s["task"] == "sft"
    assert set(s["eval"]) >= {"exact_match", "loss", "exact_match_per_skill"}
    assert 0.0 <= s["eval"]["exact_match"] <= 1.0
    assert set(s["eval"]["exact_match_per_skill"]) == set(info["config"]["skills"])
    # full data trains every item of every kind and every wrong-answer token, every epoch
    assert s["trained_share_noisy"] == s["trained_share_clean"] == 1.0
    assert s["wrong_tokens_trained"] == 2 * info["wrong_response_tokens"]
    assert s["tokens_trained"] > s["wrong_tokens_trained"] > 0
    assert (tmp_path / "sft" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "sft" / "scores.npz").is_file()


def test_qtuning_sft_run_trains_a_quarter(make_cfg, tiny_sft):
    s = run(make_cfg(tiny_sft + ["strategy=qtuning", "strategy.sample_ratio=0.25", "strategy.token_ratio=0.5"], "qt"))
    n = s["train_samples_total"]
    assert abs(s["realised_keep_ratio"] - 0.25) < 0.1
    assert s["scoring_forward_tokens"] > 0
    assert 0.0 <= s["trained_share_noisy"] <= 1.0 and s["wrong_token_share"] < 1.0
    e0 = s["epochs_detail"][0]
    assert sum(e0[q] for q in ("q1", "q2", "q3", "q4", "middle")) == n
    assert e0["tokens_kept"] == e0["tokens_trained"]
