"""Tokenised SFT items and their collate: the one data shape every causal-LM task produces.

An item is a dict with ``sample_id`` (index in the full training set), ``input_ids`` (prompt +
response [+ eos]) and ``labels`` (-100 on prompt positions, so the loss is response-only).
Labels are *not* shifted here; the model side shifts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    prompt_ids: list[int]
    response_ids: list[int]


def build_example(prompt_ids: Sequence[int], response_ids: Sequence[int], max_length: int | None = None):
    """(input_ids, labels) with response-only labels, truncated from the right to max_length."""
    ids = list(prompt_ids) + list(response_ids)
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels


class SFTDataset(Dataset):
    """In-memory tokenised SFT set. ``meta`` (optional) is a per-item list of dicts describing
    each item (skill, kind, ...) for analyses; it never reaches the model."""

    def __init__(
        self, examples: Sequence[TokenizedExample], max_length: int | None = None, meta: Sequence[dict] | None = None
    ) -> None:
        self.input_ids: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        for ex in examples:
            ids, labels = build_example(ex.prompt_ids, ex.response_ids, max_length)
            self.input_ids.append(torch.tensor(ids, dtype=torch.long))
            self.labels.append(torch.tensor(labels, dtype=torch.long))
        self.meta = list(meta) if meta is not None else None
        if self.meta is not None and len(self.meta) != len(self.input_ids):
            raise ValueError("meta must have one entry per example")

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, idx: int) -> dict:
        return {"sample_id": int(idx), "input_ids": self.input_ids[idx], "labels": self.labels[idx]}

    def num_response_tokens(self) -> torch.Tensor:
        return torch.tensor([int((lab != IGNORE_INDEX).sum()) for lab in self.labels])


def collate_sft(items: Sequence[dict], pad_id: int = 0) -> dict:
    """Right-pad to the longest item; padding gets label -100 and attention 0."""
    length = max(len(it["input_ids"]) for it in items)
    b = len(items)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((b, length), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        input_ids[i, :n] = it["input_ids"]
        labels[i, :n] = it["labels"]
        attn[i, :n] = 1
    return {
        "sample_id": torch.tensor([int(it["sample_id"]) for it in items], dtype=torch.long),
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attn,
    }
