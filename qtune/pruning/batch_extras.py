"""What an epoch's plan adds to each collated batch, as a collate function."""

from __future__ import annotations

from typing import Callable

import torch

from qtune.pruning.segments import SegmentMap


class BatchExtras:
    """Adds the plan's per-sample loss weights and the data's wrong-answer token flags to a
    collated batch (small and picklable: it runs in loader workers). Weights stay per sample
    ([S], ``sample_id`` order) on a packed batch too; the flags follow its rows ([R, L])."""

    def __init__(self, inner: Callable | None, weights: torch.Tensor | None, wrong_by_id: torch.Tensor | None) -> None:
        self.inner, self.weights, self.wrong_by_id = inner, weights, wrong_by_id

    def __call__(self, items):
        if self.inner is None:
            from torch.utils.data import default_collate

            batch = default_collate(items)
        else:
            batch = self.inner(items)
        return self.add(batch)

    def add(self, batch: dict) -> dict:
        ids = batch["sample_id"]
        if self.weights is not None:
            batch["sample_weight"] = self.weights[ids.cpu()].to(ids.device)
        if self.wrong_by_id is not None and "input_ids" in batch:
            # label coordinates (label j predicts input token j + 1), padded to the input length
            # so that trimming a batch's columns trims them alike
            length = batch["input_ids"].shape[1]
            w = self.wrong_by_id[ids.cpu(), 1 : 1 + length]
            if "seg" in batch:  # packed rows: each sample's flags at its own label positions
                w = SegmentMap.labels(batch).to_packed(w.to(ids.device), fill=False)
            batch["wrong_tokens"] = torch.nn.functional.pad(w, (0, length - w.shape[1])).to(ids.device)
        return batch
