"""Greedy-decoding exact match for SFT tasks.

Prompts are sorted by length, left-padded into batches (attention mask plus explicit position
ids, so a padded row computes exactly what it would alone) and decoded with the KV cache, one
token per step for the whole batch, stopping once every row has produced eos. That keeps a few
hundred eval items at a few seconds on a CPU.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from typing import Sequence

import torch

from qtune.data.bundle import GenerationEval


def _until_eos(ids: Sequence[int], eos_id: int | None) -> list[int]:
    ids = [int(i) for i in ids]
    return ids[: ids.index(eos_id)] if eos_id is not None and eos_id in ids else ids


@torch.no_grad()
def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    eos_id: int,
    pad_id: int = 0,
    max_new_tokens: int = 16,
    batch_size: int = 256,
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (lists of ids), each cut after its first eos (the eos
    kept) or after ``max_new_tokens``. Returned in the order of ``prompts``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    params = inspect.signature(model.forward).parameters
    keep_arg = "logits_to_keep" in params
    cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5 vs 4
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            for i, row in zip(
                idx,
                _decode_batch(
                    model, [prompts[i] for i in idx], eos_id, pad_id, max_new_tokens, device, keep_arg, cache_arg
                ),
            ):
                results[i] = row
    finally:
        model.train(was_training)
    return results


def _decode_batch(model, prompts, eos_id, pad_id, max_new_tokens, device, keep_arg, cache_arg):
    b, length = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.long)
    for r, p in enumerate(prompts):
        if len(p):
            ids[r, length - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[r, length - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    extra = {"logits_to_keep": 1} if keep_arg else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra)
    past, pos = _cache_of(out), pos[:, -1:]
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    steps = []
    for step in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(-1)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        steps.append(nxt)
        finished |= nxt == eos_id
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=device)], dim=1)
        pos = pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True, **{cache_arg: past})
        past = _cache_of(out)
    gen = torch.stack(steps, dim=1).tolist()
    rows = []
    for row in gen:
        cut = row.index(eos_id) + 1 if eos_id in row else len(row)
        rows.append(row[:cut])
    return rows


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def greedy_exact_match(
    model,
    generation: GenerationEval,
    eos_id: int,
    pad_id: int = 0,
    batch_size: int = 256,
    return_predictions: bool = False,
) -> dict:
    """``{"exact_match": float, "per_group": {group: float}}``: a prediction matches when its
    tokens up to eos equal the target's tokens up to eos (a continuation that never emits eos
    matches only if it equals the whole target, which ``max_new_tokens`` >= target length + 1
    rules out for an over-long answer)."""
    preds = greedy_generate(model, generation.prompt_ids, eos_id, pad_id, generation.max_new_tokens, batch_size)
    hits = [_until_eos(p, eos_id) == _until_eos(t, eos_id) for p, t in zip(preds, generation.target_ids)]
    groups = generation.groups or ["all"] * len(hits)
    per: dict[str, list[bool]] = defaultdict(list)
    for g, h in zip(groups, hits):
        per[str(g)].append(h)
    result = {
        "exact_match": sum(hits) / max(len(hits), 1),
        "per_group": {g: sum(v) / len(v) for g, v in sorted(per.items())},
    }
    if return_predictions:
        result["predictions"] = preds
        result["hits"] = hits
    return result
