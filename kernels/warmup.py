"""Pay the one-off build cost of a backend (Inductor compile, Triton JIT and tile tuning)
before training starts, so per-epoch timings measure training, and report it separately."""

from __future__ import annotations

import time

import torch

from .dispatch import token_stats


def warm_up(vocab_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32,
            backend: str | None = None) -> float:
    """Run the statistics once with and once without gradients on a small dummy batch
    (sizes >= 2, so dynamic shapes are not specialised to 1); returns the seconds spent."""
    t0 = time.perf_counter()
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = torch.randn(2, 3, vocab_size, generator=g).to(device=device, dtype=dtype)
    labels = torch.randint(0, vocab_size, (2, 3), generator=g).to(device)
    labels[0, 0] = -100
    kwargs = {} if backend is None else {"backend": backend}
    with torch.no_grad():
        token_stats(logits, labels, **kwargs)
    logits.requires_grad_(True)
    token_stats(logits, labels, **kwargs).loss.sum().backward()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0
