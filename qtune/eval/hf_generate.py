"""Greedy decoding for Hugging Face models through transformers' own ``generate``.

Batched: prompts sorted by length, left-padded (the tokenizer-independent way a decoder-only
model batches prompts), each row stopped at eos. :mod:`qtune.eval.generation` scores the text.
"""

from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def hf_generate(
    model, prompts: Sequence[Sequence[int]], eos_id: int, pad_id: int, max_new_tokens: int, batch_size: int = 64
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (token id lists), in their order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            length = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), length), dtype=torch.long)
            for r, i in enumerate(idx):
                p = list(prompts[i])
                ids[r, length - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[r, length - len(p) :] = 1
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                use_cache=True,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            for r, i in enumerate(idx):
                row = gen[r, length:].tolist()
                out[i] = row[: row.index(eos_id) + 1] if eos_id in row else row
    finally:
        model.train(was_training)
    return out
