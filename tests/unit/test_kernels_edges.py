"""Edge cases of the statistics path: precision for confident tokens, masked (-inf) logits,
NaN in ignored rows, V = 1, autocast, double backward and failures in the backward pass.

Each case is checked against a float64 definition or plain PyTorch, independent of the code
under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qtune.kernels as K
from qtune.kernels import linear_token_stats, token_stats, token_stats_reference

BACKENDS = ["torch", "compiled", "reference"]


def el2n_float64(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||softmax(z) - onehot(y)||_2 per row, by definition, in float64."""
    p = torch.softmax(z.double(), -1)
    return (p - F.one_hot(y, z.shape[-1]).double()).square().sum(-1).sqrt()


@pytest.mark.parametrize("backend", BACKENDS)
def test_el2n_keeps_its_digits_for_confident_tokens(backend):
    """sum p^2 - 2 p_y + 1 cancels to 0 in fp32 when p_y ~ 1; every backend must not."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 1000, generator=g)
    y = torch.randint(0, 1000, (6,), generator=g)
    gaps = torch.tensor([2.0, 8.0, 12.0, 16.0, 20.0, 24.0])  # label logit this far above the rest
    z[torch.arange(6), y] = z.max(-1).values + gaps
    want = el2n_float64(z, y)
    assert want[-1] < 1e-7  # a value fp32 cancellation returns as 0
    got = token_stats(z, y, backend=backend).el2n.double()
    torch.testing.assert_close(got, want, rtol=2e-3, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_vocabulary_entries_give_finite_statistics(backend):
    """Logits of -inf (a masked or padded vocabulary entry) are probability 0: every output
    equals the statistics of the row without those columns, and the gradient there is 0."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 40, generator=g) * 3
    y = torch.randint(0, 30, (5,), generator=g)
    masked = torch.cat([z[:, :30], torch.full((5, 10), float("-inf"))], 1).requires_grad_(True)
    out = token_stats(masked, y, backend=backend)
    want = token_stats_reference(z[:, :30], y)
    for f in ("loss", "entropy", "el2n", "p_label", "correct", "margin"):
        torch.testing.assert_close(getattr(out, f), getattr(want, f), atol=2e-5, rtol=2e-5, msg=f)
    out.loss.sum().backward()
    assert torch.isfinite(masked.grad).all() and (masked.grad[:, 30:] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_label_logit_of_minus_inf(backend):
    """The label itself masked: loss +inf (as F.cross_entropy), the other statistics finite
    and equal to the reference's; scoring passes store them."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 20, generator=g)
    y = torch.tensor([1, 4, 7])
    z[1, 4] = float("-inf")
    out = token_stats(z, y, backend=backend)
    assert out.loss[1] == float("inf") and torch.isfinite(out.loss[[0, 2]]).all()
    want = token_stats_reference(z, y)
    for f in ("entropy", "el2n", "p_label", "correct", "margin"):
        assert torch.isfinite(getattr(out, f)).all(), f
        torch.testing.assert_close(getattr(out, f), getattr(want, f), atol=2e-5, rtol=2e-5, msg=f)


@pytest.mark.parametrize("backend", ["torch", "compiled"])
def test_nan_logits_in_ignored_rows_give_zero_gradient(backend):
    """Padding positions can carry NaN logits (fully masked attention rows); they are ignored,
    so their gradient is 0 on every backend and NaN never reaches the weights."""
    z = torch.randn(4, 50)
    z[1] = float("nan")
    y = torch.tensor([3, -100, 7, 9])
    x = z.clone().requires_grad_(True)
    out = token_stats(x, y, backend=backend)
    out.loss.sum().backward()
    assert torch.isfinite(out.loss).all() and (out.loss[1] == 0)
    assert (x.grad[1] == 0).all() and torch.isfinite(x.grad).all()
    ref = z[[0, 2, 3]].clone().requires_grad_(True)
    F.cross_entropy(ref, y[[0, 2, 3]], reduction="sum").backward()
    torch.testing.assert_close(x.grad[[0, 2, 3]], ref.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_class_and_ignore_index_beyond_the_vocabulary(backend):
    """V = 1: p_y = 1, loss 0, margin 1 (no other class). An ignore_index >= V is allowed."""
    out = token_stats(torch.randn(3, 1), torch.zeros(3, dtype=torch.long), backend=backend)
    assert torch.equal(out.margin, torch.ones(3)) and torch.equal(out.loss, torch.zeros(3))
    z, y = torch.randn(4, 10), torch.tensor([1, 99, 2, 99])
    out = token_stats(z, y, ignore_index=99, backend=backend)
    want = F.cross_entropy(z, y, ignore_index=99, reduction="none")
    torch.testing.assert_close(out.loss, want)
    assert out.valid.tolist() == [True, False, True, False]


@pytest.mark.parametrize("backend", ["torch", "compiled"])
def test_outputs_can_be_modified_in_place(backend):
    """Scaling an output in place must neither fail in backward nor change the gradient."""
    z = torch.randn(4, 30, requires_grad=True)
    y = torch.arange(4)
    out = token_stats(z, y, backend=backend)
    entropy = out.entropy.detach().clone()
    out.entropy.mul_(2)
    out.loss.mul_(3)
    out.loss.sum().backward()
    p = torch.softmax(z.detach(), dim=-1)
    assert torch.allclose(out.entropy, 2 * entropy)
    assert torch.allclose(z.grad, 3 * (p - torch.nn.functional.one_hot(y, 30)), atol=1e-5)


@pytest.mark.parametrize("entry", ["token_stats", "linear_token_stats"])
def test_double_backward_is_refused_not_silently_wrong(entry):
    """The backward formulas are first order only: asking for a graph through them must fail
    loudly instead of dropping the second-order term."""
    z = torch.randn(3, 20, requires_grad=True)
    w_tok = torch.rand(3, requires_grad=True)
    y = torch.arange(3)
    if entry == "token_stats":
        loss = token_stats(z, y, backend="torch").loss
    else:
        w = torch.randn(20, 8, requires_grad=True)
        z = torch.randn(3, 8, requires_grad=True)
        loss = linear_token_stats(z, w, y, backend="torch").loss
    (gz,) = torch.autograd.grad((loss * w_tok).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        gz.sum().backward()


@pytest.mark.parametrize("hidden_dtype", [torch.float32, torch.bfloat16])
def test_fused_head_under_autocast(hidden_dtype):
    """Lightning's bf16-mixed runs the forward under autocast and the backward outside it: the
    fused path must multiply the same tensors in both, for hidden states of either dtype."""
    g = torch.Generator().manual_seed(3)
    h0 = torch.randn(2, 6, 16, generator=g).to(hidden_dtype)
    w0 = torch.randn(50, 16, generator=g) / 4
    y = torch.randint(0, 50, (2, 6), generator=g)
    y[0, :2] = -100
    wt = torch.rand(2, 6, generator=g)
    grads = []
    for fused in (True, False):
        h, w = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (
                linear_token_stats(h, w, y, backend="torch", chunk_size=4).loss
                if fused
                else token_stats_reference(F.linear(h, w), y).loss
            )
        assert loss.dtype == torch.float32
        (loss * wt).sum().backward()
        assert h.grad.dtype == hidden_dtype and w.grad.dtype == torch.float32
        grads.append((loss.detach(), h.grad.float(), w.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


def test_fused_head_with_nothing_supervised():
    """All tokens ignored: the loss is a finite 0 even if ignored positions hold NaN hidden
    states, it backpropagates zeros into weight and bias (not None: DDP expects every
    parameter's gradient), and it works when only the head is trained."""
    h = torch.randn(2, 3, 8)
    h[0, 1] = float("nan")
    w, b = torch.randn(11, 8, requires_grad=True), torch.randn(11, requires_grad=True)
    y = torch.full((2, 3), -100)
    out = linear_token_stats(h, w, y, bias=b, backend="torch")
    assert torch.equal(out.loss, torch.zeros(2, 3))
    out.loss.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    out.entropy.add_(1)  # separate tensors: touching one leaves the others at 0
    assert torch.equal(out.el2n, torch.zeros(2, 3))


@pytest.mark.parametrize("entry", ["token_stats", "linear_token_stats"])
def test_auto_falls_back_when_a_backward_fails(monkeypatch, entry):
    """Backward kernels are built at the first backward: under "auto" a failure there is
    replaced by the next backend (with a warning), as in the forward; an explicit choice
    still raises."""
    from qtune.kernels import dispatch

    real = dispatch.get_impl

    class BrokenBackward:
        name = "compiled"

        def stats(self, *args):
            return real("torch").stats(*args)

        def grad(self, *args, **kwargs):
            raise RuntimeError("backward kernel failed to build")

    monkeypatch.setattr(dispatch, "get_impl", lambda n: BrokenBackward() if n == "compiled" else real(n))
    monkeypatch.setattr(dispatch, "_broken", {"cpu": set()})
    monkeypatch.setattr(dispatch, "_warned", set())
    monkeypatch.setattr(dispatch, "_cpu_compiler_ok", lambda: True)
    monkeypatch.setattr(dispatch, "_default", "auto")
    g = torch.Generator().manual_seed(4)
    h, w = torch.randn(10, 8, generator=g), torch.randn(30, 8, generator=g)
    y = torch.randint(0, 30, (10,), generator=g)
    wt = torch.rand(10, generator=g)

    def grads(backend, fused):
        hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
        loss = (
            linear_token_stats(hh, ww, y, backend=backend, chunk_size=4).loss
            if fused
            else token_stats(F.linear(hh, ww), y, backend=backend).loss
        )
        (loss * wt).sum().backward()
        return hh.grad, ww.grad

    fused = entry == "linear_token_stats"
    with pytest.warns(RuntimeWarning, match="'compiled' failed"):
        got = grads(None, fused)
    want = grads("reference", False)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert K.resolve_backend(None, torch.device("cpu")) == "torch"  # remembered
    with pytest.raises(RuntimeError, match="failed to build"):
        grads("compiled", fused)
