"""data=embedded with an HF model: chat-form items (labels on the answer and the end-of-turn
token only), exact match through transformers' generate, and final/ in HF format."""

from __future__ import annotations

import pytest
import torch
from tiny_hf import save_tiny_chat_llama

from qtune.train import run

SMALL = ["data.num_train=48", "data.num_eval=10", "batch_size=8", "eval_batch_size=16"]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return save_tiny_chat_llama(tmp_path_factory.mktemp("chat") / "model")


def _args(chat_dir, *extra):
    return ["model=hf", f"model.path={chat_dir}", "data=embedded", *SMALL, *extra]


def test_only_the_answer_and_end_of_turn_are_labelled(make_cfg, chat_dir):
    from transformers import AutoTokenizer

    from qtune.config.build import build_task_and_model

    bundle, _ = build_task_and_model(make_cfg(_args(chat_dir)))
    tok = AutoTokenizer.from_pretrained(str(chat_dir))
    assert bundle.eos_id == tok.convert_tokens_to_ids("<|im_end|>")
    for i in range(len(bundle.train)):
        item, meta = bundle.train[i], bundle.train_meta[i]
        labelled = item["labels"][item["labels"] != -100].tolist()
        assert tok.decode(labelled) == meta["response"] + "<|im_end|>"
        start = meta["response_start"]
        assert (item["labels"][:start] == -100).all()
        prompt = tok.decode(item["input_ids"][:start].tolist())
        question = meta["prompt"].removesuffix("\nA: ")
        assert prompt == f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        if meta["kind"] == "noisy":
            assert meta["wrong_positions"]
    assert bundle.info["chat_form"] is True


def test_generate_exact_match_batched_equals_one_by_one(make_cfg, chat_dir):
    from qtune.eval.hf_generate import hf_generate
    from qtune.config.build import build_task_and_model

    bundle, model = build_task_and_model(make_cfg(_args(chat_dir)))
    gen = bundle.generation
    a = hf_generate(model, gen.prompt_ids, bundle.eos_id, bundle.pad_id, gen.max_new_tokens, 16)
    b = hf_generate(model, gen.prompt_ids, bundle.eos_id, bundle.pad_id, gen.max_new_tokens, 1)
    assert a == b
    assert all(len(p) <= gen.max_new_tokens for p in a)


@pytest.mark.parametrize("merge", [True, False])
def test_lora_run_writes_a_loadable_final_model(make_cfg, tmp_path, chat_dir, merge):
    import lightning as L
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class Keep(L.Callback):
        def on_fit_end(self, trainer, pl_module):
            self.model = pl_module.model

    keep = Keep()
    s = run(
        make_cfg(_args(chat_dir, "epochs=1", "adapter=lora", f"adapter.merge={merge}", "optim.lr=1e-2"), f"m{merge}"),
        extra_callbacks=[keep],
    )
    assert 0.0 <= s["eval"]["exact_match"] <= 1.0
    assert set(s["eval"]["exact_match_per_skill"]) == {"add", "reverse", "sort", "count", "copy"}
    final = tmp_path / f"m{merge}" / "final"
    assert (final / ("model.safetensors" if merge else "adapter_model.safetensors")).is_file()
    assert not (final / "model.safetensors").exists() or merge
    loaded = AutoModelForCausalLM.from_pretrained(str(final)).eval()
    tok = AutoTokenizer.from_pretrained(str(final))
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "sort cba"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    trained = keep.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_full_fine_tuning_final_model_matches(make_cfg, tmp_path, chat_dir):
    from transformers import AutoModelForCausalLM

    s = run(make_cfg(_args(chat_dir, "epochs=1"), "fft"))
    assert s["trainable_params"] == s["num_params"]
    p, fwd = s["num_params"], s["forward_tokens_trained"]
    assert s["flops_estimate"] == pytest.approx(6 * p * fwd)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "fft" / "final"))
    ckpt = torch.load(tmp_path / "fft" / "checkpoints" / "last.ckpt", weights_only=True)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, ckpt["state_dict"][f"model.{k}"], rtol=0, atol=0)


def test_tiny_llama_final_model_loads(make_cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    from qtune.data.tokenizer import CharTokenizer

    run(make_cfg(["data.num_train=64", "data.num_eval=8", "epochs=1", "batch_size=16"], "tl"))
    final = tmp_path / "tl" / "final"
    model = AutoModelForCausalLM.from_pretrained(str(final))
    assert CharTokenizer.load(str(final)).vocab_size == model.config.vocab_size
