"""The embedded task in chat form, for models with a real tokenizer (``model=hf``, SmolLM2).

Each item becomes one user turn (the question, without the character model's ``A:`` marker)
and the assistant's answer, rendered exactly as ``data=jsonl`` renders a chat line
(:func:`qtune.data.jsonl.tokenize_records`): the prompt is the tokenizer's chat template with
the generation prompt, the response is the answer plus the eos token, which for chat models
is the end-of-turn token (``<|im_end|>`` for SmolLM2), so only those tokens carry labels.
"""

from __future__ import annotations

from qtune.data.jsonl import Record, _ids, tokenize_records
from qtune.data.sft import TokenizedExample

MARKER = "\nA: "  # the character model's answer marker; a chat template has its own


def _wrong_positions(response_ids: list[int], true_ids: list[int]) -> list[int]:
    return [i for i, t in enumerate(response_ids) if i >= len(true_ids) or t != true_ids[i]]


def chat_encode(records: list[dict], tokenizer) -> tuple[list[TokenizedExample], list[dict]]:
    """(examples, meta) of embedded records through ``tokenizer``'s chat template; meta as the
    character encoding gives it (``response_start``, ``wrong_positions`` against the true
    answer's tokens)."""
    chats = [
        Record([{"role": "user", "content": r["prompt"].removesuffix(MARKER)}], r["response"], i + 1, "chat")
        for i, r in enumerate(records)
    ]
    examples, _, info = tokenize_records(chats, tokenizer, max_length=None, path="<embedded task>")
    if len(examples) != len(records):  # an empty answer: the embedded task never makes one
        raise ValueError(f"embedded task: {info['dropped_empty']} item(s) with an empty answer")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    true_ids = [ids + eos for ids in _ids(tokenizer, [r["true_response"] for r in records])]
    meta = [
        dict(rec, response_start=len(ex.prompt_ids), wrong_positions=_wrong_positions(ex.response_ids, true))
        for rec, ex, true in zip(records, examples, true_ids)
    ]
    return examples, meta


def special_ids(tokenizer) -> tuple[int, int]:
    """(eos id, pad id) of an HF tokenizer (pad falls back to eos)."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    return eos, (pad if pad is not None else (eos if eos is not None else 0))
