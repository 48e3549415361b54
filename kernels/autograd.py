"""The autograd function around a backend: its `stats` in forward, its `grad` in backward.

Sits above the backend choice (`dispatch`), because a backward that fails under "auto" falls
back to the next backend exactly like a failed forward.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .dispatch import call_with_fallback, next_backend


def backend_grad(impl, fallback: bool, z, y, valid, lse, g, out=None):
    """`impl.grad(...)`. Backward kernels are built lazily, at the first backward, so under
    "auto" (`fallback`) a backward that fails to build or launch is replaced by the next
    simpler backend exactly like a failed forward (see `dispatch.call_with_fallback`)."""
    try:
        return impl.grad(z, y, valid, lse, g, out=out)
    except Exception as err:
        name = next_backend(impl.name, z.device.type, err, fallback)
        return call_with_fallback(lambda i: i.grad(z, y, valid, lse, g, out=out), name, z.device.type, fallback)


class StatsFunction(torch.autograd.Function):
    """Calls a backend's `stats` in forward and its `grad` in backward (loss is the only
    differentiable output; the gradient is scaled per row by whatever weighted the loss).
    Once differentiable: a double backward raises instead of silently dropping the Hessian."""

    @staticmethod
    def forward(ctx, z, y, valid, impl, fallback=False):
        out = impl.stats(z.detach(), y, valid)
        ctx.impl, ctx.fallback = impl, fallback
        ctx.save_for_backward(z, y, valid, out[-1])
        ctx.mark_non_differentiable(*out[1:])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss, *_):
        z, y, valid, lse = ctx.saved_tensors
        if g_loss is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        dz = backend_grad(ctx.impl, ctx.fallback, z.detach(), y, valid, lse, g_loss.float().contiguous())
        return dz, None, None, None, None
