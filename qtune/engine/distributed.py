"""Once-per-epoch collectives: gather variable-length per-rank rows, sum counters."""

from __future__ import annotations

import torch


def gather_rows(trainer, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate each rank's rows (first dim) in rank order; every rank gets the same result.

    Lengths are exchanged first, then fixed-size padded buffers are gathered once, so ranks
    whose row counts differ (a shorter last batch) cannot stall the collective.
    """
    if trainer is None or trainer.world_size == 1:
        return tensors
    strategy = trainer.strategy
    n = next(iter(tensors.values())).shape[0]
    device = strategy.root_device
    lengths = strategy.all_gather(torch.tensor([n], device=device)).flatten().tolist()
    cap = max(lengths)
    out = {}
    for key, t in tensors.items():
        buf = torch.zeros((cap,) + tuple(t.shape[1:]), dtype=t.dtype, device=device)
        buf[:n] = t.to(device)
        gathered = strategy.all_gather(buf)  # [world, cap, ...]
        out[key] = torch.cat([gathered[r, : lengths[r]] for r in range(len(lengths))]).cpu()
    return out


def sum_over_ranks(trainer, values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Sum scalar counters over ranks and move them to the host (one sync per epoch)."""
    keys = sorted(values)
    if not keys:
        return {}
    stacked = torch.stack([values[k].detach().double().reshape(()) for k in keys])
    if trainer is not None and trainer.world_size > 1:
        stacked = trainer.strategy.reduce(stacked.to(trainer.strategy.root_device), reduce_op="sum")
    return dict(zip(keys, stacked.cpu().tolist()))


def digest(*tensors: torch.Tensor) -> int:
    """A 62-bit fingerprint of tensors' bytes (NaNs included), for cross-rank agreement checks."""
    import hashlib

    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 2


def ranks_agree(trainer, value: int) -> bool:
    """True when every rank passes the same integer (one tiny all_gather)."""
    if trainer is None or trainer.world_size == 1:
        return True
    strategy = trainer.strategy
    got = strategy.all_gather(torch.tensor([value], dtype=torch.long, device=strategy.root_device))
    return bool((got.flatten() == got.flatten()[0]).all())
