"""Pay the one-off build cost of a backend (Inductor compile, Triton JIT and tile tuning)
before training starts, so per-epoch timings measure training, and report it separately."""

from __future__ import annotations

import time

import torch

from .formula import TUNE_MIN_ELEMENTS
from .linear import linear_token_stats
from .logits import token_stats


def warm_up(
    vocab_size: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
    hidden_size: int | None = None,
) -> float:
    """Run the statistics once with and once without gradients on a dummy batch; returns the
    seconds spent. Sizes >= 2, so dynamic shapes are not specialised to 1; on CUDA the batch is
    big enough for the tile timing to happen here, not in the first training step. With
    `hidden_size`, the fused LM-head path (`linear_token_stats`) is built too."""
    t0 = time.perf_counter()
    device = torch.device(device)
    rows = 3
    if device.type == "cuda":
        rows = max(rows, -(-TUNE_MIN_ELEMENTS // (2 * vocab_size)))
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = torch.randn(2, rows, vocab_size, generator=g).to(device=device, dtype=dtype)
    labels = torch.randint(0, vocab_size, (2, rows), generator=g).to(device)
    labels[0, 0] = -100
    kwargs = {} if backend is None else {"backend": backend}
    with torch.no_grad():
        token_stats(logits, labels, **kwargs)
    logits.requires_grad_(True)
    token_stats(logits, labels, **kwargs).loss.sum().backward()
    if hidden_size:
        h = torch.randn(2, 3, hidden_size, generator=g).to(device=device, dtype=dtype)
        w = torch.randn(vocab_size, hidden_size, generator=g).to(device=device, dtype=dtype)
        h.requires_grad_(True)
        w.requires_grad_(True)
        linear_token_stats(h, w, labels[:, :3], **kwargs).loss.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0
