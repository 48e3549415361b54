"""Per-sample views of a packed batch: statistics per sample, token tensors to and from samples.

A packed batch (:func:`qtune.data.packed_collate.collate_packed`) holds several samples per row;
``seg`` and ``position_ids`` say which sample each position belongs to and where in it. A
:class:`SegmentMap` turns that into the coordinates of the statistics: label coordinates
[R, L - 1] (position j predicts token j + 1, as ``lm_stats`` returns them) or token
coordinates [R, L]. In label coordinates a position belongs to the sample of the token it
predicts, at that sample's label index (its position - 1), exactly where the padded path
(``collate_sft`` then ``labels[:, 1:]``) puts it; a position predicting a sample's first token
or padding belongs to none (-1).

Everything is scatter/gather over whole tensors: no loop per sample and no host sync, so it
runs inside a training step. The per-sample tensors follow the batch's ``sample_id`` order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SegmentMap:
    """``seg`` [R, T]: each position's sample (index into the batch's samples, -1: none);
    ``index`` [R, T]: its column in that sample's own row; ``num_samples``: S."""

    seg: torch.Tensor
    index: torch.Tensor
    num_samples: int

    @classmethod
    def labels(cls, batch: dict) -> "SegmentMap":
        """Label coordinates [R, L - 1], the coordinates of ``lm_stats`` and of token masks."""
        pos = batch["position_ids"][:, 1:]
        seg = batch["seg"][:, 1:].masked_fill(pos == 0, -1)  # predicts a first token: no sample's
        return cls(seg, pos - 1, batch["sample_id"].numel())

    @classmethod
    def tokens(cls, batch: dict) -> "SegmentMap":
        """Token coordinates [R, L] (``input_ids``, per-token inputs)."""
        return cls(batch["seg"], batch["position_ids"], batch["sample_id"].numel())

    def _sum(self, values: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        out = torch.zeros(self.num_samples, dtype=dtype or values.dtype, device=values.device)
        return out.index_add_(0, self.seg.clamp(min=0).flatten(), values.flatten().to(out.dtype))

    def scores(self, stats, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample means over the tokens in ``mask`` [R, T] of ``stats`` (a ``TokenStats``
        in these coordinates): the fields and values of ``sample_scores`` on the padded batch."""
        m = mask & (self.seg >= 0)
        count = self._sum(m, torch.long)

        def mean(values: torch.Tensor) -> torch.Tensor:
            values = values.detach()
            total = self._sum(torch.where(m, values, torch.zeros_like(values)))
            nan = torch.full_like(total, float("nan"))
            return torch.where(count > 0, total / count.clamp(min=1).to(total.dtype), nan)

        return {
            "loss": mean(stats.loss),
            "entropy": mean(stats.entropy),
            "el2n": mean(stats.el2n),
            "p_label": mean(stats.p_label),
            "margin": mean(stats.margin),
            "accuracy": mean(stats.correct),
            "num_tokens": count,
        }

    def _flat(self, length: int) -> tuple[torch.Tensor, int]:
        """Flat index into [S, length] of each position; positions of no sample (or past
        ``length``) point at one spare slot after the end."""
        spare = self.num_samples * length
        inside = (self.seg >= 0) & (self.index < length)
        return torch.where(inside, self.seg * length + self.index, spare), spare

    def to_samples(self, x: torch.Tensor, length: int | None = None, fill=0) -> torch.Tensor:
        """[R, T] packed -> [S, length] one row per sample (``fill`` elsewhere). ``length``
        defaults to T, enough for any sample; pass the padded path's width to match it."""
        length = self.seg.shape[1] if length is None else int(length)
        flat, spare = self._flat(length)
        out = torch.full((spare + 1,), fill, dtype=x.dtype, device=x.device)
        out.scatter_(0, flat.flatten(), x.flatten())
        return out[:spare].view(self.num_samples, length)

    def to_packed(self, y: torch.Tensor, fill=0) -> torch.Tensor:
        """[S, T'] one row per sample -> [R, T] packed (``fill`` where no sample's column is)."""
        flat, spare = self._flat(y.shape[1])
        src = torch.cat([y.flatten(), torch.full((1,), fill, dtype=y.dtype, device=y.device)])
        return src[flat]

    def per_position(self, values: torch.Tensor, fill=0) -> torch.Tensor:
        """A per-sample tensor [S] at every position of its sample ([R, T]), e.g. a batch
        plan's ``keep`` or a sample weight; ``fill`` at positions of no sample."""
        src = torch.cat([values, torch.full((1,), fill, dtype=values.dtype, device=values.device)])
        return src[torch.where(self.seg >= 0, self.seg, self.num_samples)]
