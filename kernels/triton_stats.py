"""Backend "triton": hand-written forward and backward kernels, one program per token row.

Forward: one sweep over the row in BLOCK-wide tiles keeping, per lane, the sum of exponentials
s, sum e*(z - m) t and sum e^2 q (label lane left out, see `formula`); per tile only the tile
max is reduced across lanes. The rescale of s, t, q, the argmax (tl.argmax of the tile) and
the "max over v != label" (tile maxima, plus one masked re-read of the label's tile at the
end) are scalar work done only when a tile changes them, and only the label's tile masks the
label lane, so each element costs about one exp and a handful of FMAs. m starts at
the label logit, finite and <= the row max, and out-of-row lanes hold -1e30 instead of -inf,
so no inf - inf or 0 * inf can arise; logits of -inf are read as -1e30 for the same reason.
Ignored rows skip the sweep.
Traffic: the logits are read once (plus one tile per row); 7 floats per row are written.

Backward: (softmax - onehot) * g written tile by tile into the gradient (the only N x V
allocation), reading the logits once more: 2 reads + 1 write per training step.
Tile sizes are picked per (V, dtype) by timing a few candidates on the first CUDA call.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from .formula import TUNE_MIN_ELEMENTS


@triton.jit
def _stats_fwd(Z, Y, OUT, stride_z, N, V, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    lab = tl.load(Y + row)
    if lab < 0:
        for k in tl.static_range(7):
            tl.store(OUT + k * N + row, 0.0)
    else:
        zrow = Z + row * stride_z
        zy = tl.load(zrow + lab).to(tl.float32)
        m = tl.maximum(zy, -1.0e30)  # running max; starts at the label logit (<= the row max)
        best = -1.0e30  # running max for the first-index argmax, kept apart from m
        bidx = 0
        mo = -1.0e30  # max over tiles that do not hold the label (label tile done after)
        s = tl.zeros([BLOCK], tl.float32)
        t = tl.zeros([BLOCK], tl.float32)
        q = tl.zeros([BLOCK], tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < V
            x = tl.load(zrow + cols, mask=mask, other=0.0).to(tl.float32)
            x = tl.where(mask, tl.maximum(x, -1.0e30), -1.0e30)
            tmax = tl.max(x, 0)
            has_lab = (lab >= start) & (lab < start + BLOCK)
            mo = tl.maximum(mo, tl.where(has_lab, -1.0e30, tmax))
            if tmax > best:  # strictly greater: earlier tiles win ties, as torch.argmax
                best = tmax
                bidx = start + tl.argmax(x, 0)
            if tmax > m:  # rescale only when the max grows (rare after the first tiles)
                d = m - tmax
                alpha = tl.exp(d)
                t = alpha * (t + d * s)
                s = alpha * s
                q = (alpha * alpha) * q
                m = tmax
            xs = x - m
            e = tl.exp(xs)
            if has_lab:  # sums over v != y (see `formula`); one tile per row pays the select
                e = tl.where(cols == lab, 0.0, e)
            s += e
            t += e * xs
            q += e * e
        lstart = (lab // BLOCK) * BLOCK
        cols = lstart + tl.arange(0, BLOCK)
        keep = (cols < V) & (cols != lab)
        xl = tl.load(zrow + cols, mask=keep, other=0.0).to(tl.float32)
        other = tl.maximum(mo, tl.max(tl.where(keep, xl, -1.0e30), 0))
        so = tl.sum(s, 0)
        zys = tl.maximum(zy, -1.0e30) - m  # finite even for a label logit of -inf
        ey = tl.exp(zys)
        ssum = so + ey
        logs = tl.log(ssum)
        lse = m + logs
        loss = lse - zy
        p_y = ey / ssum
        ent = logs - (tl.sum(t, 0) + ey * zys) / ssum
        el2n = tl.sqrt(tl.sum(q, 0) + so * so) / ssum
        margin = p_y - tl.exp(other - lse)
        tl.store(OUT + row, loss)
        tl.store(OUT + N + row, ent)
        tl.store(OUT + 2 * N + row, el2n)
        tl.store(OUT + 3 * N + row, p_y)
        tl.store(OUT + 4 * N + row, tl.where(bidx == lab, 1.0, 0.0))
        tl.store(OUT + 5 * N + row, margin)
        tl.store(OUT + 6 * N + row, lse)


@triton.jit
def _stats_bwd(Z, Y, LSE, G, DZ, stride_z, stride_d, V, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    lab = tl.load(Y + row)
    drow = DZ + row * stride_d
    if lab < 0:
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            tl.store(drow + cols, tl.zeros([BLOCK], tl.float32).to(DZ.dtype.element_ty), mask=cols < V)
    else:
        zrow = Z + row * stride_z
        lse = tl.load(LSE + row)
        g = tl.load(G + row)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < V
            x = tl.load(zrow + cols, mask=mask, other=0.0).to(tl.float32)
            p = tl.exp(x - lse)
            dz = (p - tl.where(cols == lab, 1.0, 0.0)) * g
            tl.store(drow + cols, dz.to(DZ.dtype.element_ty), mask=mask)


# (BLOCK, num_warps). The forward keeps three BLOCK-wide fp32 accumulators, about
# 3 * BLOCK / (32 * num_warps) registers a thread, so wide tiles need many warps (Hopper
# CE kernels run 32) and the widest ones may spill: timing decides, not this list's order.
_CANDIDATES = ((1024, 4), (2048, 4), (4096, 8), (4096, 16), (8192, 8), (8192, 16), (8192, 32), (16384, 16), (16384, 32))
_chosen: dict = {}


def _heuristic(v: int) -> tuple[int, int]:
    block = min(triton.next_power_of_2(max(v, 16)), 4096)
    return block, (8 if block >= 4096 else 4)


def _config(kind: str, z: torch.Tensor, launch) -> tuple[int, int]:
    """(BLOCK, num_warps): timed once per (kind, V, dtype) on CUDA for big inputs, else a rule."""
    n, v = z.shape
    if z.device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1" or n * v < TUNE_MIN_ELEMENTS:
        return _heuristic(v)
    key = (kind, v, z.dtype)
    if key not in _chosen:
        cands = [c for c in _CANDIDATES if c[0] <= triton.next_power_of_2(v)] or [_heuristic(v)]
        times = []
        for cfg in cands:
            launch(*cfg)  # compile + warm
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(3):
                launch(*cfg)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        _chosen[key] = cands[min(range(len(cands)), key=times.__getitem__)]
    return _chosen[key]


class TritonStats:
    """`block` pins the tile width (tests use it to force many tiles on small rows)."""

    name = "triton"

    def __init__(self, block: int | None = None):
        self.block = block

    def _cfg(self, kind, z, launch):
        if self.block:
            return self.block, 4
        return _config(kind, z, launch)

    def stats(self, z, y, valid):
        n, v = z.shape
        yk = torch.where(valid, y, torch.full_like(y, -1))
        out = torch.empty(7, n, device=z.device, dtype=torch.float32)

        def launch(block, warps):
            _stats_fwd[(n,)](z, yk, out, z.stride(0), n, v, BLOCK=block, num_warps=warps)

        with _on(z):
            launch(*self._cfg("fwd", z, launch))
        # separate tensors, not views of `out`: callers may modify one in place, as with the
        # other backends (7 x N floats)
        return tuple(r.clone() for r in out.unbind(0))

    def grad(self, z, y, valid, lse, g, out=None):
        """`out` may be `z`: each tile is loaded before the same tile is stored."""
        n, v = z.shape
        yk = torch.where(valid, y, torch.full_like(y, -1))
        dz = torch.empty_like(z) if out is None else out

        def launch(block, warps, dest=dz):
            _stats_bwd[(n,)](z, yk, lse, g, dest, z.stride(0), dest.stride(0), v, BLOCK=block, num_warps=warps)

        in_place = dz.untyped_storage().data_ptr() == z.untyped_storage().data_ptr()

        def trial(block, warps):  # tile timing launches many times: never over the logits
            launch(block, warps, torch.empty_like(z) if in_place else dz)

        with _on(z):
            launch(*self._cfg("bwd", z, trial))
        return dz


def _on(z: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's (an LM head placed on
    another GPU, as `device_map="auto"` does, would otherwise be read from the wrong one)."""
    return torch.cuda.device(z.device) if z.is_cuda else contextlib.nullcontext()
