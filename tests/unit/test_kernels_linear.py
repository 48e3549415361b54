"""`linear_token_stats` (fused LM head) against the reference on materialised logits.

The gradient check uses random per-token weights: the bug Liger's fused linear cross entropy
had until v0.8.2 (grad_weight reduced over tokens before the per-token upstream was known) would
pass a uniform-weight test and fail this one.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qtune.kernels import linear_token_stats, token_stats_reference
from qtune.kernels.linear import default_chunk

FIELDS = ("loss", "entropy", "el2n", "p_label", "correct", "margin")


def _inputs(b=3, t=10, h=16, v=203, bias=True, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hid = torch.randn(b, t, h, generator=g).to(dtype)
    w = (torch.randn(v, h, generator=g) / h**0.5 * 3).to(dtype)
    bb = (torch.randn(v, generator=g) * 0.5).to(dtype) if bias else None
    lab = torch.randint(0, v, (b, t), generator=g)
    lab[torch.rand(b, t, generator=g) < 0.3] = -100
    lab[1] = -100  # one sample with no supervised token
    wt = torch.rand(b, t, generator=g) * 3  # non-uniform per-token loss weights
    return hid, w, bb, lab, wt


def _leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in ts]


@pytest.mark.parametrize("backend", ["torch", "compiled"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [None, 7])
def test_linear_parity_and_weighted_grads(backend, bias, chunk):
    hid, w, bb, lab, wt = _inputs(bias=bias)
    h1, w1, b1 = _leaves(hid, w, bb)
    ref = token_stats_reference(F.linear(h1, w1, b1), lab)
    (ref.loss * wt).sum().backward()
    h2, w2, b2 = _leaves(hid, w, bb)
    out = linear_token_stats(h2, w2, lab, bias=b2, backend=backend, chunk_size=chunk)
    (out.loss * wt).sum().backward()
    for f in FIELDS:
        torch.testing.assert_close(getattr(out, f), getattr(ref, f).float(), atol=2e-5, rtol=2e-5, msg=f)
    assert torch.equal(out.valid, lab != -100)
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w2.grad, w1.grad, atol=1e-5, rtol=1e-4)
    if bias:
        torch.testing.assert_close(b2.grad, b1.grad, atol=1e-5, rtol=1e-4)
    assert (h2.grad[lab == -100] == 0).all()


def test_linear_all_ignored_and_bf16():
    hid, w, bb, lab, wt = _inputs(bias=False)
    h = hid.clone().requires_grad_(True)
    out = linear_token_stats(h, w, torch.full_like(lab, -100), backend="torch")
    assert not out.valid.any() and (out.loss == 0).all()
    out.loss.sum().backward()  # still connected to the graph, with a zero gradient
    assert (h.grad == 0).all()

    hid, w, bb, lab, wt = _inputs(dtype=torch.bfloat16)
    ref = token_stats_reference(F.linear(hid, w, bb), lab)
    out = linear_token_stats(hid, w, lab, bias=bb, backend="torch", chunk_size=5)
    for f in FIELDS:
        torch.testing.assert_close(getattr(out, f), getattr(ref, f), atol=1e-4, rtol=1e-4, msg=f)


def test_default_chunk_bounds_memory():
    assert default_chunk(4096) == 256 and default_chunk(10) == 64
    assert default_chunk(32768) * 16 <= 32768 and default_chunk(5000) % 64 == 0


@pytest.mark.parametrize("backend", ["torch", "compiled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grad_written_over_the_logits_equals_a_fresh_gradient(backend, dtype):
    """The fused backward lets each backend's `grad` overwrite the chunk's logits (one chunk
    buffer instead of two); that must give exactly the out-of-place gradient."""
    from qtune.kernels.dispatch import get_impl

    impl = get_impl(backend)
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(37, 203, generator=g) * 4).to(dtype)
    y = torch.randint(0, 203, (37,), generator=g)
    valid = torch.rand(37, generator=g) > 0.2
    lse = torch.logsumexp(z.float(), dim=1)
    up = torch.rand(37, generator=g) * 2
    fresh = impl.grad(z, y, valid, lse, up)
    buf = z.clone()
    same = impl.grad(buf, y, valid, lse, up, out=buf)
    assert same.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(same, fresh, atol=0, rtol=0)
    # and both equal the plain formula (softmax - onehot) * upstream, zero on ignored rows
    ref = (torch.softmax(z.float(), 1) - F.one_hot(y, 203).float()) * up[:, None]
    ref[~valid] = 0
    torch.testing.assert_close(
        fresh.float(), ref, atol=1e-5 if dtype == torch.float32 else 1e-2, rtol=1e-3 if dtype == torch.float32 else 2e-2
    )
