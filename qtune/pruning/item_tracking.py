"""What a run trained on, by item kind: for datasets whose items say what they are (the
embedded task marks each item clean, noisy or duplicate, and the wrong tokens of noisy ones),
count per step how many of each kind got a gradient and how many wrong-answer tokens stayed in
the loss. Counts stay on the device and are summed once per epoch."""

from __future__ import annotations

import torch


class ItemTracker:
    def __init__(self, item_meta: list[dict]) -> None:
        kinds = [m.get("kind", "unknown") for m in item_meta]
        self.kind_names = sorted(set(kinds))
        index = {k: i for i, k in enumerate(self.kind_names)}
        self.kind_code = torch.tensor([index[k] for k in kinds], dtype=torch.long)
        self.kind_totals = {k: kinds.count(k) for k in self.kind_names}
        self.wrong_by_id = None
        self.wrong_total = 0
        if item_meta and all("wrong_positions" in m and "response_start" in m for m in item_meta):
            length = (
                max(
                    m["response_start"] + (max(m["wrong_positions"]) + 1 if m["wrong_positions"] else 0)
                    for m in item_meta
                )
                + 1
            )
            wrong = torch.zeros(len(item_meta), length, dtype=torch.bool)
            for i, m in enumerate(item_meta):
                for p in m["wrong_positions"]:
                    wrong[i, m["response_start"] + p] = True
            self.wrong_by_id = wrong
            self.wrong_total = int(wrong.sum())

    @classmethod
    def maybe(cls, item_meta: list[dict] | None) -> "ItemTracker | None":
        if not item_meta or not any("kind" in m for m in item_meta):
            return None
        return cls(item_meta)

    def to(self, device) -> "ItemTracker":
        """Kind codes go to the training device (counted per step there); the wrong-token
        flags stay on the host, where the loader adds them to each batch."""
        self.kind_code = self.kind_code.to(device)
        return self

    def wrong_tokens(self, sample_ids: torch.Tensor, length: int) -> torch.Tensor | None:
        """[B, length] bool in label coordinates (label j predicts input token j + 1)."""
        if self.wrong_by_id is None:
            return None
        w = self.wrong_by_id[sample_ids.cpu(), 1 : 1 + length]
        if w.shape[1] < length:
            w = torch.nn.functional.pad(w, (0, length - w.shape[1]))
        return w.to(sample_ids.device)

    def step_counts(self, sample_ids: torch.Tensor, trained: torch.Tensor | None) -> dict[str, torch.Tensor]:
        codes = self.kind_code[sample_ids]
        # a weighted one-hot sum: no boolean indexing (a host sync) and, unlike a weighted
        # bincount on CUDA, allowed under torch.use_deterministic_algorithms
        onehot = torch.nn.functional.one_hot(codes, len(self.kind_names)).float()
        counts = onehot.sum(0) if trained is None else trained.float() @ onehot
        return {f"trained_{k}": counts[i] for i, k in enumerate(self.kind_names)}

    def shares(self, counts: dict[str, float], epochs: int = 1) -> dict[str, float]:
        """Trained items of each kind over (items of that kind × epochs); wrong tokens likewise."""
        out = {
            f"trained_share_{k}": counts.get(f"trained_{k}", 0.0) / max(n * epochs, 1)
            for k, n in self.kind_totals.items()
        }
        if self.wrong_by_id is not None:
            out["wrong_tokens_trained"] = counts.get("wrong_tokens_trained", 0.0)
            out["wrong_token_share"] = out["wrong_tokens_trained"] / max(self.wrong_total * epochs, 1)
        return out
