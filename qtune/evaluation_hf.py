"""Exact match for Hugging Face models through transformers' own ``generate``.

Batched and greedy: prompts sorted by length, left-padded (the tokenizer-independent way a
decoder-only model batches prompts), each row stopped at eos. A prediction matches when its
tokens up to eos equal the reference answer's up to eos, per group (skill) as well.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from .data.bundle import GenerationEval


def _until_eos(ids: Sequence[int], eos_id: int | None) -> list[int]:
    ids = [int(i) for i in ids]
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


@torch.no_grad()
def hf_generate(model, prompts: Sequence[Sequence[int]], eos_id: int, pad_id: int,
                max_new_tokens: int, batch_size: int = 64) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (token id lists), in their order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            length = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), length), dtype=torch.long)
            for r, i in enumerate(idx):
                p = list(prompts[i])
                ids[r, length - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[r, length - len(p):] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 eos_token_id=eos_id, pad_token_id=pad_id, use_cache=True,
                                 temperature=None, top_p=None, top_k=None)
            for r, i in enumerate(idx):
                row = gen[r, length:].tolist()
                out[i] = row[: row.index(eos_id) + 1] if eos_id in row else row
    finally:
        model.train(was_training)
    return out


def hf_exact_match(model, generation: GenerationEval, eos_id: int, pad_id: int,
                   batch_size: int = 64, return_predictions: bool = False) -> dict:
    """``{"exact_match": float, "per_group": {group: float}}`` through ``model.generate``."""
    preds = hf_generate(model, generation.prompt_ids, eos_id, pad_id,
                        generation.max_new_tokens, batch_size)
    hits = [_until_eos(p, eos_id) == _until_eos(t, eos_id)
            for p, t in zip(preds, generation.target_ids)]
    per: dict[str, list[bool]] = defaultdict(list)
    for g, h in zip(generation.groups or ["all"] * len(hits), hits):
        per[str(g)].append(h)
    result = {"exact_match": sum(hits) / max(len(hits), 1),
              "per_group": {g: sum(v) / len(v) for g, v in sorted(per.items())}}
    if return_predictions:
        result["predictions"], result["hits"] = preds, hits
    return result
