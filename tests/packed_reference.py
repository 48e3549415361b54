"""Random SFT items and a packed batch of them, beside the padded batch of the same samples:
what the packing tests compare (the padded path is the reference)."""

from __future__ import annotations

import numpy as np
import torch

from qtune.data.packed_collate import collate_packed
from qtune.data.packing import pack_plan
from qtune.data.sft import build_example, collate_sft


def make_items(num: int, seed: int, vocab: int = 40, max_prompt: int = 9, max_response: int = 8) -> list[dict]:
    """Items of odd sizes: prompts of 0 to ``max_prompt`` tokens (0: the first label is a
    response token, the boundary rule's hard case), responses of 1 to ``max_response``."""
    g = np.random.default_rng(seed)
    items = []
    for i in range(num):
        prompt = g.integers(3, vocab, size=int(g.integers(0, max_prompt + 1))).tolist()
        response = g.integers(3, vocab, size=int(g.integers(1, max_response + 1))).tolist()
        ids, labels = build_example(prompt, response)
        items.append({"sample_id": 1000 + 7 * i, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels)})
    return items


def packed_and_padded(items: list[dict], cap: int, seed: int = 0) -> tuple[dict, dict]:
    """(packed batch, padded batch of the same samples in the packed batch's order)."""
    by_id = {it["sample_id"]: it for it in items}
    plan = pack_plan(list(by_id), [len(it["input_ids"]) for it in items], cap, seed=seed, epoch=0)
    rows = [[by_id[int(i)] for i in row] for row in plan.rows()]
    packed = collate_packed(rows, max_tokens_per_row=cap)
    padded = collate_sft([by_id[int(i)] for i in packed["sample_id"]])
    return packed, padded


def place_like_packed(padded_values: torch.Tensor, packed: dict, filler: torch.Tensor) -> torch.Tensor:
    """Per-sample label-coordinate values [S, Lmax - 1] written into packed label coordinates
    [R, L - 1] by walking each row (the obvious loop the vectorised map is checked against);
    ``filler`` [R, L - 1] stays where no sample's label is."""
    out = filler.clone()
    lengths = packed["sample_length"].tolist()
    for s in range(len(lengths)):
        where = (packed["seg"] == s).nonzero()
        row, first = int(where[0, 0]), int(where[0, 1])
        out[row, first : first + lengths[s] - 1] = padded_values[s, : lengths[s] - 1]
    return out
