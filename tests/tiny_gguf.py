"""A tiny random Llama written as a GGUF file with the ``gguf`` library (byte-level BPE
tokenizer with a chat template), the way llama.cpp's converter lays it out."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    merges = ["h e", "Ġ t", "i s"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _byte_tokens() + [m.replace(" ", "") for m in merges]
    vocab, hidden, ffn, heads, kv = len(tokens), 16, 32, 2, 1
    head_dim = hidden // heads
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny test llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(seed)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    t("token_embd.weight", vocab, hidden)
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, dtype=np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
    t("blk.0.attn_q.weight", hidden, hidden)
    t("blk.0.attn_k.weight", kv * head_dim, hidden)
    t("blk.0.attn_v.weight", kv * head_dim, hidden)
    t("blk.0.attn_output.weight", hidden, hidden)
    t("blk.0.ffn_gate.weight", ffn, hidden)
    t("blk.0.ffn_up.weight", ffn, hidden)
    t("blk.0.ffn_down.weight", hidden, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
