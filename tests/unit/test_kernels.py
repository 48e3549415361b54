"""Parity of the "torch" and "compiled" backends with the naive reference formula.

Every output and the gradient of a loss weighted per token by random weights are compared with
`token_stats_reference`, which shares no code with the backends. Triton is covered by
test_kernels_triton.py, the fused LM head by test_kernels_linear.py.
"""

from __future__ import annotations

import pytest
import torch

import qtune.kernels as K
from qtune.kernels import TokenStats, token_stats, token_stats_reference

BACKENDS = ["torch", "compiled"]
FIELDS = ("loss", "entropy", "el2n", "p_label", "correct", "margin")


def check(backend, logits, labels, atol=2e-5, rtol=2e-5, gtol=1e-6, seed=0):
    """Outputs and weighted-loss gradients of `backend` equal the reference's."""
    w = torch.rand(labels.shape, generator=torch.Generator().manual_seed(seed)) + 0.1
    x_ref = logits.detach().clone().requires_grad_(True)
    ref = token_stats_reference(x_ref, labels)
    (ref.loss * w).sum().backward()
    x = logits.detach().clone().requires_grad_(True)
    out = token_stats(x, labels, backend=backend)
    assert isinstance(out, TokenStats)
    (out.loss * w).sum().backward()
    for f in FIELDS:
        got, want = getattr(out, f), getattr(ref, f)
        assert got.dtype == torch.float32 and got.shape == labels.shape, f
        assert torch.isfinite(got).all(), f
        torch.testing.assert_close(got, want.float(), atol=atol, rtol=rtol, msg=f)
    assert torch.equal(out.valid, labels != -100)
    for f in FIELDS[1:]:
        assert not getattr(out, f).requires_grad, f
    assert x.grad.dtype == logits.dtype
    torch.testing.assert_close(x.grad.float(), x_ref.grad.float(), atol=gtol, rtol=1e-3)
    ignored = labels == -100
    for f in FIELDS:
        assert (getattr(out, f)[ignored] == 0).all(), f
    assert (x.grad[ignored] == 0).all()
    return out


def labels_for(logits, frac_ignored=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, logits.shape[-1], logits.shape[:-1], generator=g)
    lab[torch.rand(lab.shape, generator=g) < frac_ignored] = -100
    return lab


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 9, 1000), (37, 333), (3, 5, 4097)])
def test_parity_random(backend, shape):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(2)) * 3
    labels = labels_for(logits)
    labels.view(-1)[0] = logits.reshape(-1, shape[-1])[0].argmax()  # at least one correct
    out = check(backend, logits, labels)
    assert out.correct.sum() >= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_entirely_ignored(backend):
    logits = torch.randn(3, 6, 257) * 2
    labels = labels_for(logits, 0.2)
    labels[1] = -100  # a whole sample with no supervised token
    out = check(backend, logits, labels)
    assert not out.valid[1].any()
    check(backend, logits, torch.full_like(labels, -100))  # nothing valid at all


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits(backend):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(24, 500, generator=g) * 1e4
    logits[::3, 7] = 1e4  # saturated rows with a clear winner ...
    labels = labels_for(logits, 0.1)
    labels[::6] = 7  # ... some predicted right (p_y -> 1, loss -> 0), others far off
    check(backend, logits, labels, atol=1e-3, rtol=1e-5, gtol=1e-5)
    # exact ties: argmax is the first maximal index, the margin is 0 against an equal logit
    flat = torch.zeros(4, 50)
    out = check(backend, flat, torch.tensor([0, 3, 49, -100]))
    assert out.correct.tolist() == [1.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(out.entropy[:3], torch.full((3,), 50.0).log())


@pytest.mark.parametrize("backend", ["torch", pytest.param("compiled", marks=pytest.mark.slow)])
def test_bf16_inputs(backend):
    """bf16 is a second compiled shape family (two more Inductor builds: slow when cold)."""
    logits = (torch.randn(4, 7, 700) * 4).bfloat16()
    labels = labels_for(logits)
    # Both sides read the same bf16 values and accumulate in fp32, so outputs agree closely;
    # the bf16 gradient agrees to bf16 rounding.
    check(backend, logits, labels, atol=3e-5, rtol=3e-5, gtol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_classification_one_token_per_sample(backend):
    logits = torch.randn(16, 10) * 2
    labels = torch.randint(0, 10, (16,))
    out = check(backend, logits, labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
    check(backend, logits.unsqueeze(1), labels.unsqueeze(1))  # [B, 1, C] as batch_stats uses


def test_formulas_against_float64_definitions():
    """The reference itself, checked against the textbook definitions in float64."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, 40, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 40, (6,), generator=g)
    p = z.softmax(-1)
    onehot = torch.nn.functional.one_hot(y, 40).double()
    out = token_stats(z.float(), y, backend="torch")
    p_y = p.gather(1, y[:, None]).squeeze(1)
    other = p.masked_fill(onehot.bool(), -1).amax(1)
    torch.testing.assert_close(out.el2n.double(), (p - onehot).norm(dim=1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.entropy.double(), -(p * p.log()).sum(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.margin.double(), p_y - other, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.loss.double(), -p_y.log(), atol=1e-5, rtol=1e-5)


def test_compiled_does_not_recompile_for_new_lengths():
    from torch._dynamo.utils import counters

    x = torch.randn(2, 11, 301, requires_grad=True)
    token_stats(x, labels_for(x), backend="compiled").loss.sum().backward()  # warm (fp32, CPU)
    before = counters["stats"]["unique_graphs"]
    for t in (5, 17, 23, 64):
        x = torch.randn(3, t, 301 + t, requires_grad=True)  # new N and new V
        token_stats(x, labels_for(x), backend="compiled").loss.sum().backward()
    assert counters["stats"]["unique_graphs"] == before


def test_default_backend_and_auto(monkeypatch):
    assert K.get_default_backend() in K.BACKENDS
    old = K.get_default_backend()
    try:
        K.set_default_backend("torch")
        assert K.resolve_backend(None, torch.device("cpu")) == "torch"
        with pytest.raises(ValueError):
            K.set_default_backend("nope")
        K.set_default_backend("auto")
        from qtune.kernels import dispatch

        monkeypatch.setattr(dispatch, "_cpu_compiler_ok", lambda: False)
        monkeypatch.setattr(dispatch, "_warned", set())
        with pytest.warns(RuntimeWarning, match="chunked 'torch'"):
            assert K.resolve_backend("auto", torch.device("cpu")) == "torch"
        monkeypatch.setattr(dispatch, "_cpu_compiler_ok", lambda: True)
        assert K.resolve_backend("auto", torch.device("cpu")) == "compiled"
        assert K.resolve_backend("auto", torch.device("cuda")) == "triton"
    finally:
        K.set_default_backend(old)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        token_stats(torch.randn(3, 4, 5), torch.zeros(3, 5, dtype=torch.long))


@pytest.mark.parametrize("entry", ["token_stats", "linear_token_stats"])
def test_auto_falls_back_when_a_backend_fails(monkeypatch, entry):
    from qtune.kernels import dispatch, linear_token_stats

    class Broken:
        def stats(self, *args):
            raise RuntimeError("C++ compiler exploded")

    real = dispatch.get_impl
    monkeypatch.setattr(dispatch, "get_impl", lambda n: Broken() if n == "compiled" else real(n))
    monkeypatch.setattr(dispatch, "_broken", {"cpu": set()})
    monkeypatch.setattr(dispatch, "_warned", set())
    monkeypatch.setattr(dispatch, "_cpu_compiler_ok", lambda: True)
    monkeypatch.setattr(dispatch, "_default", "auto")
    x = torch.randn(2, 5, 77)
    lab = labels_for(x)
    if entry == "token_stats":
        call = lambda **kw: token_stats(x, lab, **kw)  # noqa: E731
        expected = token_stats_reference(x, lab)
    else:  # the fused LM-head path falls back the same way
        h, w = torch.randn(2, 5, 8), torch.randn(77, 8)
        call = lambda **kw: linear_token_stats(h, w, lab, **kw)  # noqa: E731
        expected = token_stats_reference(h @ w.T, lab)
    with pytest.warns(RuntimeWarning, match="'compiled' failed"):
        out = call()
    torch.testing.assert_close(out.entropy, expected.entropy, atol=1e-5, rtol=1e-5)
    assert K.resolve_backend(None, torch.device("cpu")) == "torch"  # remembered
    with pytest.raises(RuntimeError, match="exploded"):  # an explicit choice never falls back
        call(backend="compiled")


@pytest.mark.parametrize("backend", ["torch", "compiled"])
@pytest.mark.parametrize("bad", [50, -3])
def test_label_outside_the_vocabulary_is_an_error(backend, bad):
    """A label >= V or a negative label other than ignore_index is refused, by token_stats and
    by the fused linear path, instead of reading a wrong logit."""
    from qtune.kernels import linear_token_stats, token_stats

    logits = torch.randn(2, 4, 50)
    labels = torch.tensor([[1, 2, -100, 3], [4, bad, 5, -100]])
    with pytest.raises(RuntimeError, match=r"outside \[0, 50\)"):
        token_stats(logits, labels, backend=backend)
    with pytest.raises(RuntimeError, match=r"outside \[0, 50\)"):
        linear_token_stats(torch.randn(2, 4, 8), torch.randn(50, 8), labels, backend=backend)
    labels[1, 1] = -100  # ignore_index itself is fine
    assert token_stats(logits, labels, backend=backend).valid.sum() == 5
