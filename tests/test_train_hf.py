"""``qtune-train model=hf data=jsonl``: a local Hugging Face model and local JSONL, end to end."""

import json

from tiny_hf import save_tiny_llama

from qtune.train import run

ROWS = [
    {"instruction": "add two and three", "input": "", "output": "five"},
    {"instruction": "reverse the words", "input": "red green blue", "output": "blue green red"},
    {"messages": [{"role": "user", "content": "what colour is the sky"},
                  {"role": "assistant", "content": "it is blue"}]},
    {"instruction": "sort these numbers", "input": "three one two", "output": "one two three"},
]


def test_hf_model_trains_on_local_jsonl(make_cfg, tmp_path):
    model_dir = save_tiny_llama(tmp_path / "model", chat_template=True)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(ROWS[i % 4]) for i in range(40)) + "\n")
    s = run(make_cfg([f"model=hf", f"model.path={model_dir}", "data=jsonl", f"data.path={data}",
                      "data.eval_fraction=0.2", "epochs=2", "batch_size=8",
                      "strategy=random", "strategy.keep_ratio=0.5"], "hf"))
    n = s["train_samples_total"]
    assert n == 32 and s["samples_trained"] == 2 * 16
    assert s["tokens_trained"] > 0 and s["eval"]["loss"] > 0
    assert (tmp_path / "hf" / "checkpoints" / "last.ckpt").is_file()
