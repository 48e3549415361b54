"""Per-token scores computed offline (TokenCleaning's global ranking): the file, the global
threshold, and the scatter of a sample's scores into a micro-batch's response positions.

Format: an ``.npz`` (loaded with ``allow_pickle=False``) holding ``sample_id`` [N] (the ids
0..N−1 of the training set), ``offsets`` [N + 1] (CSR: sample i's scores are
``score[offsets[i]:offsets[i + 1]]``) and ``score`` [S], one value per response token in
label order. Ragged by design: a dense [N, T] array would be mostly padding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .token_base import keep_count


def save_token_scores(path: str | Path, per_sample: list[torch.Tensor]) -> None:
    """Write scores of samples 0..N−1 (one 1-D tensor of response-token scores each)."""
    lengths = np.array([int(s.numel()) for s in per_sample], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = torch.cat([s.detach().double().flatten().cpu() for s in per_sample]) if per_sample else torch.zeros(0)
    np.savez(path, sample_id=np.arange(len(per_sample)), offsets=offsets, score=flat.numpy())


def load_token_scores(path: str | Path, num_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets long [N + 1], score float64 [S]) ordered by sample id; errors name the file."""
    with np.load(path, allow_pickle=False) as data:
        missing = {"sample_id", "offsets", "score"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: token score file lacks {sorted(missing)}")
        ids, offsets, score = data["sample_id"], data["offsets"], data["score"]
    n = ids.shape[0]
    if not np.array_equal(np.sort(ids), np.arange(n)) or offsets.shape != (n + 1,):
        raise ValueError(f"{path}: sample_id must be 0..N-1 once each and offsets hold N + 1 entries")
    if num_samples is not None and n != num_samples:
        raise ValueError(f"{path}: scores for {n} samples, the training set has {num_samples}")
    if offsets[0] != 0 or offsets[-1] != score.shape[0] or (np.diff(offsets) < 0).any():
        raise ValueError(f"{path}: offsets must rise from 0 to len(score)")
    lengths = np.diff(offsets)[np.argsort(ids)]  # reorder rows by sample id
    starts = offsets[:-1][np.argsort(ids)]
    order = np.concatenate([np.arange(s, s + k) for s, k in zip(starts, lengths)]) if n else np.zeros(0, np.int64)
    new_offsets = np.concatenate([[0], np.cumsum(lengths)])
    return torch.from_numpy(new_offsets.astype(np.int64)), torch.from_numpy(score[order.astype(np.int64)]).double()


def global_threshold(scores: torch.Tensor, keep_ratio: float) -> float:
    """The ⌈keep_ratio·n⌉-th largest of the finite scores: keeping score ≥ threshold keeps that
    share of the data set's response tokens (more on ties at the threshold)."""
    s = torch.as_tensor(scores).double().flatten()
    s = s[torch.isfinite(s)]
    k = int(keep_count(torch.tensor(s.numel()), keep_ratio))
    if k == 0:
        raise ValueError("no finite token scores to take a threshold from")
    return float(torch.topk(s, k).values[-1])


def threshold_from_file(path: str | Path, keep_ratio: float) -> float:
    """``global_threshold`` over every response token of a token score file."""
    return global_threshold(load_token_scores(path)[1], keep_ratio)


def scatter_scores(
    offsets: torch.Tensor, score: torch.Tensor, sample_ids: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """float64 [B, T]: each row's stored scores placed on its response positions in order (NaN
    elsewhere). A row whose response length differs from the stored one (another tokenizer or
    truncation) is an error naming the sample id."""
    resp = response_mask.bool().cpu()
    ids = sample_ids.long().cpu()
    lengths = offsets[ids + 1] - offsets[ids]
    bad = resp.sum(-1) != lengths
    if bool(bad.any()):
        sid = int(ids[bad][0])
        raise ValueError(f"sample {sid}: {int(resp[bad][0].sum())} response tokens, {int(lengths[bad][0])} scores")
    pos = resp.long().cumsum(-1) - 1
    idx = (offsets[ids].unsqueeze(-1) + pos).clamp(min=0, max=max(score.numel() - 1, 0))
    out = torch.where(resp, score[idx] if score.numel() else torch.zeros(resp.shape, dtype=torch.float64), torch.nan)
    return out.to(response_mask.device)
