"""What a task hands the engine: datasets, collate, and what evaluation needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from torch.utils.data import Dataset


@dataclass
class GenerationEval:
    """Greedy-decoding exact match: prompts and reference responses as token ids."""

    prompt_ids: Sequence[Sequence[int]]
    target_ids: Sequence[Sequence[int]]
    groups: Sequence[str] | None = None  # e.g. skill names, for per-group exact match
    max_new_tokens: int = 16


@dataclass
class TaskBundle:
    task: str  # "sft" or "classify"
    train: Dataset  # items carry sample_id
    eval: Dataset
    collate: Callable
    train_meta: list[dict] | None = None  # per training item: kind, skill, ... (analyses)
    generation: GenerationEval | None = None
    tokenizer: Any = None
    eos_id: int | None = None
    pad_id: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # e.g. dropped_empty counts
