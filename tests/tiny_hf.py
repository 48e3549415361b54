"""Offline stand-ins for a hub model: a tiny random Llama and a word-level tokenizer, saved
to a directory exactly as ``save_pretrained`` would write a real checkpoint."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
    "{{ eos_token }} {% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# JSONL records in both forms, every word in CORPUS
ROWS = [
    {"instruction": "add two and three", "input": "", "output": "five"},
    {"instruction": "reverse the words", "input": "red green blue", "output": "blue green red"},
    {
        "messages": [
            {"role": "user", "content": "what colour is the sky"},
            {"role": "assistant", "content": "it is blue"},
        ]
    },
    {"instruction": "sort these numbers", "input": "three one two", "output": "one two three"},
]
CORPUS = [
    "### Instruction : Response System Input",
    "add two and three five reverse the words red green blue sort these numbers",
    "one two three four five six seven eight nine ten you are a helpful assistant",
    "what colour is the sky it is blue and now the grass green thanks hello",
]


def save_tiny_tokenizer(path: Path, chat_template: bool) -> Path:
    """A WordLevel tokenizer trained on CORPUS; bos <s>, eos </s>, no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return path


def save_tiny_llama(path: Path, chat_template: bool = False) -> Path:
    """A random Llama of a few thousand parameters plus the tiny tokenizer, in one directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    save_tiny_tokenizer(path, chat_template)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(path)))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    return path


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_chat_llama(path: Path) -> Path:
    """A random Llama with a byte-level BPE tokenizer (any text encodes, as in SmolLM2) and a
    ChatML template whose end-of-turn token ``<|im_end|>`` is the eos token."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + list(bytes_to_unicode().values()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=specials,
    )
    fast.chat_template = CHATML
    fast.save_pretrained(str(path))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    return path
