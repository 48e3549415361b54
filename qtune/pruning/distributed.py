"""Once-per-epoch collectives: gather variable-length per-rank rows, reduce buffers, sum counters.

The backend is Lightning's Trainer under ``qtune-train``, or :class:`TorchDistributed` (plain
``torch.distributed``, the process group torchrun / accelerate set up) under the Hugging Face
mixin: both offer ``world_size``, ``global_rank`` and ``strategy.{all_gather, reduce,
root_device}``."""

from __future__ import annotations

import torch


def gather_per_rank(trainer, t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor (any first-dim length, same trailing shape and dtype), in rank order,
    on every rank. Lengths are exchanged first, then one fixed-size padded buffer is gathered,
    so ranks whose lengths differ (a shorter last batch) cannot stall the collective."""
    if trainer is None or trainer.world_size == 1:
        return [t]
    strategy = trainer.strategy
    device = strategy.root_device
    n = t.shape[0]
    lengths = strategy.all_gather(torch.tensor([n], device=device)).flatten().tolist()
    buf = torch.zeros((max(lengths),) + tuple(t.shape[1:]), dtype=t.dtype, device=device)
    buf[:n] = t.to(device)
    gathered = strategy.all_gather(buf)  # [world, cap, ...]
    return [gathered[r, : lengths[r]].cpu() for r in range(len(lengths))]


def gather_rows(trainer, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate each rank's rows (first dim) in rank order; every rank gets the same result."""
    if trainer is None or trainer.world_size == 1:
        return tensors
    return {key: torch.cat(gather_per_rank(trainer, t)) for key, t in tensors.items()}


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


class Collective:
    """The cross-rank operations the pruning core needs, behind one object each trainer integration
    provides. ``backend`` is anything with ``world_size``, ``global_rank`` and
    ``strategy.{all_gather, reduce, root_device}`` (Lightning's Trainer is one); None is one
    process, where every operation is the identity."""

    def __init__(self, backend=None) -> None:
        self.backend = backend

    @property
    def world_size(self) -> int:
        return int(getattr(self.backend, "world_size", 1) or 1)

    @property
    def rank(self) -> int:
        return int(getattr(self.backend, "global_rank", 0) or 0)

    def gather_rows(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return gather_rows(self.backend, rows)

    def reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``t`` reduced elementwise over ranks (``op``: sum or max), on every rank."""
        if self.world_size == 1:
            return t
        strategy = self.backend.strategy
        return strategy.reduce(t.to(strategy.root_device), reduce_op=op)

    def sum(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        return sum_over_ranks(self.backend, values)

    def agree(self, value: int) -> bool:
        return ranks_agree(self.backend, value)

    def per_rank(self, t: torch.Tensor) -> list[torch.Tensor]:
        return gather_per_rank(self.backend, t)


class TorchDistributed:
    """The backend :class:`Collective` reads, over the default ``torch.distributed`` process
    group. ``device`` is where collectives run: the CUDA device under NCCL, the CPU under gloo."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("TorchDistributed needs an initialised torch.distributed process group")
        self._dist = dist
        self.root_device = torch.device(device)
        self.world_size = dist.get_world_size()
        self.global_rank = dist.get_rank()

    @property
    def strategy(self) -> "TorchDistributed":
        return self  # Lightning's spelling: trainer.strategy.all_gather(...)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """[world, *t.shape]: every rank's tensor (same shape on every rank), in rank order."""
        t = t.to(self.root_device).contiguous()
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self._dist.all_gather(out, t)
        return torch.stack(out)

    def reduce(self, t: torch.Tensor, reduce_op: str = "sum") -> torch.Tensor:
        ops = {"sum": self._dist.ReduceOp.SUM, "max": self._dist.ReduceOp.MAX}
        if reduce_op not in ops:
            raise ValueError(f"reduce_op must be one of {sorted(ops)}, got {reduce_op!r}")
        t = t.to(self.root_device).clone()
        self._dist.all_reduce(t, op=ops[reduce_op])
        return t
