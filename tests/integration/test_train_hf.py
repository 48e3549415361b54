"""``qtune-train model=hf data=jsonl``: a local Hugging Face model and local JSONL, end to end."""

import json

from tiny_hf import ROWS, save_tiny_llama

from qtune.train import run


def test_hf_model_trains_on_local_jsonl(make_cfg, tmp_path):
    model_dir = save_tiny_llama(tmp_path / "model", chat_template=True)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(ROWS[i % 4]) for i in range(40)) + "\n")
    s = run(
        make_cfg(
            [
                "model=hf",
                f"model.path={model_dir}",
                "data=jsonl",
                f"data.path={data}",
                "data.eval_fraction=0.2",
                "epochs=2",
                "batch_size=8",
                "strategy=random",
                "strategy.keep_ratio=0.5",
            ],
            "hf",
        )
    )
    n = s["train_samples_total"]
    assert n == 32 and s["samples_trained"] == 2 * 16
    assert s["tokens_trained"] > 0 and s["eval"]["loss"] > 0
    assert (tmp_path / "hf" / "checkpoints" / "last.ckpt").is_file()


def test_qtuning_exports_token_masks_within_responses(make_cfg, tmp_path):
    import numpy as np

    model_dir = save_tiny_llama(tmp_path / "model")
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(ROWS[i % 4]) for i in range(32)) + "\n")
    s = run(
        make_cfg(
            [
                "model=hf",
                f"model.path={model_dir}",
                "data=jsonl",
                f"data.path={data}",
                "epochs=1",
                "batch_size=8",
                "strategy=qtuning",
                "strategy.sample_ratio=0.5",
                "strategy.token_ratio=0.5",
                "export_plan=true",
            ],
            "qt",
        )
    )
    tokens = json.loads((tmp_path / "qt" / "plans" / "tokens_epoch_000.json").read_text())
    rows = tokens["rows"]
    assert sorted(r["sample_id"] for r in rows) == list(range(s["train_samples_total"]))
    kept_rows = [r for r in rows if r["kept"]]
    assert kept_rows and all(set(r["kept"]) <= set(r["response"]) for r in rows)
    assert sum(len(r["kept"]) for r in rows) == s["tokens_trained"]
    scores = np.load(tmp_path / "qt" / "scores.npz")
    assert len(scores["sample_id"]) == s["train_samples_total"]
    assert (scores["seen_epoch"] == 0).all()  # every row was scored in its micro-batch
