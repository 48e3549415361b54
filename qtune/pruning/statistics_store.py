"""The statistics store: each sample's last per-sample statistics (loss, entropy, EL2N, label
probability, ...) indexed by ``sample_id``: what strategies read to plan an epoch.

Each training step writes the per-sample aggregates of the samples it saw; at the end of an
epoch the writes of all ranks are merged (:meth:`StatisticsStore.merge_updates`) so every rank holds
the same store. ``seen_epoch`` is -1 for a sample never scored.
"""

from __future__ import annotations

from typing import Any

import torch

FIELDS = ("loss", "entropy", "el2n", "p_label", "margin", "accuracy")


class StatisticsStore:
    def __init__(self, num_samples: int) -> None:
        self.num_samples = int(num_samples)
        n = self.num_samples
        for name in FIELDS:
            setattr(self, name, torch.full((n,), float("nan")))
        self.num_tokens = torch.zeros(n, dtype=torch.long)
        self.seen_epoch = torch.full((n,), -1, dtype=torch.long)
        # Training dynamics for CCS-style scores.
        self.aum_sum = torch.zeros(n)  # accumulated margin p_y - max_{v!=y} p_v
        self.aum_count = torch.zeros(n, dtype=torch.long)
        self.forgetting = torch.zeros(n, dtype=torch.long)  # learned -> forgotten transitions
        self.learned = torch.zeros(n, dtype=torch.bool)

    @property
    def ppl(self) -> torch.Tensor:
        return self.loss.exp()

    @property
    def aum(self) -> torch.Tensor:
        return self.aum_sum / self.aum_count.clamp(min=1)

    def update(
        self, sample_ids: torch.Tensor, epoch: int, *, track_dynamics: bool = True, **values: torch.Tensor
    ) -> None:
        """Write per-sample aggregates. ``values`` keys are names in ``FIELDS`` plus
        ``num_tokens``. Samples with zero response tokens keep NaN scores (no signal)."""
        ids = sample_ids.detach().long().cpu()
        unknown = set(values) - set(FIELDS) - {"num_tokens"}
        if unknown:
            raise KeyError(f"unknown score fields {sorted(unknown)}; known: {FIELDS}")
        ntok = values.get("num_tokens")
        has_signal = (ntok.detach().cpu() > 0) if ntok is not None else torch.ones(len(ids), dtype=torch.bool)
        for name, val in values.items():
            val = val.detach().cpu()
            if name == "num_tokens":
                self.num_tokens[ids] = val.long()
                continue
            val = val.float().masked_fill(~has_signal, float("nan"))
            getattr(self, name)[ids] = val
        self.seen_epoch[ids] = int(epoch)
        if track_dynamics:
            self._track(ids, values, has_signal)

    def _track(self, ids, values, has_signal) -> None:
        if "margin" in values:
            m = values["margin"].detach().cpu().float()
            ok = has_signal & torch.isfinite(m)
            self.aum_sum[ids[ok]] += m[ok]
            self.aum_count[ids[ok]] += 1
        if "accuracy" in values:
            now = values["accuracy"].detach().cpu().float() >= 0.5
            was = self.learned[ids]
            forgot = was & ~now & has_signal
            self.forgetting[ids[forgot]] += 1
            self.learned[ids] = torch.where(has_signal, now, was)

    # -- distributed merge ---------------------------------------------------------------
    def merge_updates(self, sample_ids: torch.Tensor, epoch: int, **values: torch.Tensor) -> None:
        """Apply updates gathered from all ranks (ids may repeat if a plan was padded: for a
        repeated id the last write wins, in gather order, identically on every rank)."""
        self.update(sample_ids, epoch, **values)

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        keys = FIELDS + ("num_tokens", "seen_epoch", "aum_sum", "aum_count", "forgetting", "learned")
        return {"num_samples": self.num_samples, **{k: getattr(self, k).clone() for k in keys}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(
                f"checkpointed statistics store has {state['num_samples']} samples but the training "
                f"set has {self.num_samples}: was the run resumed on a different dataset?"
            )
        for k, v in state.items():
            if k != "num_samples":
                getattr(self, k).copy_(v)
