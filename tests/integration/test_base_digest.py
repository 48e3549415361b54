"""``summary.json``'s ``base_weights_sha256``: which base a run started from."""

import json

import torch
from tiny_hf import ROWS, save_tiny_llama

from qtune.models.adapters import base_weights_digest
from qtune.train import run


def test_digest_follows_the_weights_not_the_adapters(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = save_tiny_llama(tmp_path / "m")
    a = AutoModelForCausalLM.from_pretrained(str(path))
    b = AutoModelForCausalLM.from_pretrained(str(path))
    assert base_weights_digest(a) == base_weights_digest(b)
    wrapped = get_peft_model(b, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert base_weights_digest(wrapped) == base_weights_digest(a)  # LoRA's own weights left out
    with torch.no_grad():
        a.model.embed_tokens.weight[0, 0] += 1e-3
    assert base_weights_digest(a) != base_weights_digest(wrapped)


def test_runs_from_one_base_record_one_digest(make_cfg, tmp_path):
    model_dir = save_tiny_llama(tmp_path / "model")
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(ROWS[i % 4]) for i in range(16)))
    args = [
        "model=hf",
        f"model.path={model_dir}",
        "data=jsonl",
        f"data.path={data}",
        "epochs=1",
        "batch_size=8",
        "eval.exact_match=false",
    ]
    s0 = run(make_cfg([*args, "seed=0"], "s0"))
    s1 = run(make_cfg([*args, "seed=1"], "s1"))
    assert s0["base_weights_sha256"] == s1["base_weights_sha256"]
    assert len(s0["base_weights_sha256"]) == 16
