"""``attn_implementation="sdpa_segments"``: sdpa that attends inside each packed sample only.

Why: with packed rows and plain ``sdpa``, transformers keeps samples apart with a
block-diagonal mask over the whole row, so attention costs O(row²) however short the samples
are; on a CPU, for a small model, that outweighs the linear layers and eats packing's gain.
FlashAttention's varlen path avoids it on a GPU; this is the same idea with PyTorch's own
sdpa: the row is cut where ``position_ids`` restart and each segment runs causal sdpa alone,
O(Σ len²). The numbers are those of ``sdpa`` with the block-diagonal mask (tested to 1e-5,
outputs and gradients).

Batches with an ``attention_mask`` (padded batches, scoring passes) go to transformers' own
``sdpa`` unchanged, so one model serves both layouts. Without a mask and without restarts a
row is one segment (plain causal sdpa). Registered with transformers when a qtune run asks
for it (``qtune.models.hf.checked_attn_implementation``) and on ``import qtune.hf``; a user of
the HF mixin then passes ``attn_implementation="sdpa_segments"`` to ``from_pretrained``.

Limits: decoder self-attention without a KV cache (training and scoring), no sliding window
(refused: a window needs the mask this path skips), no ``output_attentions``; the segment
bounds are read on the host once per layer (one sync each, cheap on CPU, where this path is
meant to run).
"""

from __future__ import annotations

import torch

NAME = "sdpa_segments"


def segment_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the ``(start, end)`` column ranges of its segments: a segment starts at column
    0 and wherever the position does not follow the previous one (a restart). One host sync."""
    if position_ids.dim() == 1:
        position_ids = position_ids.unsqueeze(0)
    width = position_ids.shape[1]
    restart = torch.ones_like(position_ids, dtype=torch.bool)
    restart[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    rows = [[] for _ in range(position_ids.shape[0])]
    for r, c in restart.nonzero().tolist():
        rows[r].append(c)
    return [list(zip(starts, starts[1:] + [width])) for starts in rows]


def sdpa_segments_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function contract: ``query`` [B, H, L, D], ``key`` / ``value``
    [B, H_kv, L, D]; returns ``([B, L, H, D], None)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if position_ids is None:  # no mask was built for this path: attending without segments could cross samples
        raise ValueError(
            f"attn_implementation={NAME!r}: {type(module).__name__} does not pass position_ids to its "
            "attention function, so packed samples cannot be told apart; use 'sdpa'"
        )
    if getattr(module, "sliding_window", None) is not None:
        raise ValueError(
            f"attn_implementation={NAME!r} has no sliding window (layer {type(module).__name__}); use 'sdpa'"
        )
    if position_ids.shape[0] != query.shape[0]:
        position_ids = position_ids.expand(query.shape[0], -1)
    rows = []
    for r, bounds in enumerate(segment_bounds(position_ids)):
        if len(bounds) == 1:  # a row of one sample: no slicing
            pieces = [(query[r : r + 1], key[r : r + 1], value[r : r + 1])]
        else:
            pieces = [(query[r : r + 1, :, s:e], key[r : r + 1, :, s:e], value[r : r + 1, :, s:e]) for s, e in bounds]
        outs = [sdpa_attention_forward(module, q, k, v, None, dropout, scaling, **kwargs)[0] for q, k, v in pieces]
        rows.append(outs[0] if len(outs) == 1 else torch.cat(outs, dim=1))
    return torch.cat(rows, dim=0), None


def sdpa_segments_mask(*args, attention_mask=None, **kwargs):
    """The mask for ``sdpa_segments``: sdpa's own where a padding mask is given; none otherwise
    (the attention function finds the segments in ``position_ids``, no O(row²) mask is built)."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make ``sdpa_segments`` a valid ``attn_implementation`` for every transformers model."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, sdpa_segments_forward)
    AttentionMaskInterface.register(NAME, sdpa_segments_mask)
