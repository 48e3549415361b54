"""Shared shape of the one-shot (static) strategies: full data during a warm-up, then one
subset chosen from scores and kept for the rest of training (EL2N, CCS)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from .base import EpochContext, EpochPlan, PruningStrategy


class StaticSubset(PruningStrategy, ABC):
    """Subclasses set ``keep_ratio``, ``warmup_epochs``, ``scores_file`` and implement
    :meth:`select`, returning (ids, info) once; the subset is then fixed and checkpointed."""

    keep_ratio: float
    warmup_epochs: int
    scores_file: str | None

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._selected: torch.Tensor | None = None
        self._info: dict[str, float] = {}

    @property
    def select_epoch(self) -> int:
        """A scores file selects at epoch 0; otherwise after ``warmup_epochs`` full epochs."""
        return 0 if self.scores_file else self.warmup_epochs

    def observe(self, ctx: EpochContext) -> None:
        """Hook called while no subset is chosen yet (e.g. to accumulate scoring passes)."""

    @abstractmethod
    def select(self, ctx: EpochContext) -> tuple[torch.Tensor, dict[str, float]]:
        """The subset's ids and numbers worth logging, from this epoch's scores."""

    def epoch_plan(self, ctx: EpochContext) -> EpochPlan:
        if self._selected is None:
            self.observe(ctx)
            if ctx.epoch < self.select_epoch:
                return EpochPlan(torch.arange(ctx.num_samples), info={"planned_keep_ratio": 1.0, "warmup": 1})
            self._selected, info = self.select(ctx)
            self._info = {**info, "selected_at_epoch": int(ctx.epoch)}
        return EpochPlan(
            self._selected.clone(),
            info={
                "planned_keep_ratio": self.keep_ratio,
                "realised_keep_ratio": self._selected.numel() / max(1, ctx.num_samples),
                "warmup": 0,
                **self._info,
            },
        )

    def state_dict(self) -> dict[str, Any]:
        return {"selected": self._selected, "info": dict(self._info)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._selected = state.get("selected")
        self._info = dict(state.get("info", {}))
