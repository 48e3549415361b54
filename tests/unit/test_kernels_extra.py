"""The optional statistics of the token rules (top-K entropy, KL to a reference): the chunked
path against the naive reference (values and gradients, fp32 1e-5), and both against float64
definitions and hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qtune.kernels import extra_stats_reference, token_extra_stats, token_stats

DIRECTIONS = ["ref_policy", "policy_ref"]


def data(shape=(3, 7, 300), seed=0, frac=0.3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g) * 3
    zr = z + torch.randn(*shape, generator=g)  # a reference near the policy, as after SFT
    lab = torch.randint(0, shape[-1], shape[:-1], generator=g)
    lab[torch.rand(lab.shape, generator=g) < frac] = -100
    return z, zr, lab


def compare(backend, z, zr, lab, k, direction, rows=None, atol=1e-5):
    w = torch.rand(lab.shape, generator=torch.Generator().manual_seed(5)) + 0.1
    x_ref = z.detach().clone().requires_grad_(True)
    ref = extra_stats_reference(x_ref, lab, top_k=k, ref_logits=zr, kl_direction=direction)
    (ref.kl * w).sum().backward()
    x = z.detach().clone().requires_grad_(True)
    out = token_extra_stats(x, lab, top_k=k, ref_logits=zr, kl_direction=direction, backend=backend, rows=rows)
    (out.kl * w).sum().backward()
    for f in ("topk_entropy", "kl"):
        got = getattr(out, f)
        assert got.dtype == torch.float32 and got.shape == lab.shape and torch.isfinite(got).all(), f
        torch.testing.assert_close(got, getattr(ref, f), atol=atol, rtol=1e-5, msg=f)
        assert (got[lab == -100] == 0).all(), f
    assert not out.topk_entropy.requires_grad
    torch.testing.assert_close(x.grad, x_ref.grad, atol=atol, rtol=1e-4)
    assert (x.grad[lab == -100] == 0).all()
    return out


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("k,rows", [(20, None), (1, 4), (5, 2), (500, 3)])
def test_chunked_matches_reference(direction, k, rows):
    z, zr, lab = data()
    compare("torch", z, zr, lab, k, direction, rows)


@pytest.mark.parametrize("backend", ["compiled", "triton", "auto"])
def test_other_backends_fall_back_to_the_chunked_path(backend, monkeypatch):
    """No Triton or compiled kernel for these outputs: those backends run the chunked path
    (on CPU the triton name needs the interpreter flag, as for token_stats)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    z, zr, lab = data((2, 5, 64), seed=3)
    compare(backend, z, zr, lab, 20, "ref_policy")


def test_reference_against_float64_definitions():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 40, generator=g, dtype=torch.float64) * 2
    zr = torch.randn(6, 40, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 40, (6,), generator=g)
    out = token_extra_stats(z.float(), y, top_k=10, ref_logits=zr.float(), backend="torch")
    top = z.sort(-1, descending=True).values[:, :10]
    q = top.softmax(-1)
    torch.testing.assert_close(out.topk_entropy.double(), -(q * q.log()).sum(-1), atol=1e-5, rtol=1e-5)
    p, r = z.softmax(-1), zr.softmax(-1)
    torch.testing.assert_close(out.kl.double(), (r * (r.log() - p.log())).sum(-1), atol=1e-5, rtol=1e-5)
    want = F.kl_div(z.log_softmax(-1), zr.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(out.kl.double(), want, atol=1e-5, rtol=1e-5)
    back = token_extra_stats(z.float(), y, ref_logits=zr.float(), kl_direction="policy_ref", backend="torch")
    torch.testing.assert_close(back.kl.double(), (p * (p.log() - r.log())).sum(-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_hand_worked_values(backend):
    """Top-20 of 20 equal logits (and 10 far below): ln 20; two equal winners: ln 2; K >= V is
    the full entropy; the KL of a distribution with itself is 0, with a zero gradient."""
    z = torch.full((3, 30), -1.0e4)
    z[0, :20] = 0.0
    z[1, [3, 17]] = 5.0
    z[2] = torch.randn(30, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 4])
    ent = token_extra_stats(z, y, top_k=20, backend=backend).topk_entropy
    assert ent[0].item() == pytest.approx(math.log(20), abs=1e-5) and ent[1].item() == pytest.approx(
        math.log(2), abs=1e-5
    )
    full = token_extra_stats(z, y, top_k=30, backend=backend).topk_entropy
    torch.testing.assert_close(full, token_stats(z, y, backend="reference").entropy, atol=1e-5, rtol=1e-5)
    x = z.clone().requires_grad_(True)
    out = token_extra_stats(x, y, ref_logits=z.clone(), backend=backend)
    assert out.topk_entropy is None
    out.kl.sum().backward()
    assert out.kl.abs().max() < 1e-5 and x.grad.abs().max() < 1e-6


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ignored_rows_masked_vocabulary_and_a_frozen_reference(direction):
    """NaN logits on an ignored row give 0 and a zero gradient; logits of -inf in both models
    (a masked vocabulary entry) equal the row without them; the reference gets no gradient."""
    z, zr, lab = data((4, 40), seed=4, frac=0.0)
    lab[1] = -100
    z[1] = float("nan")
    masked = torch.cat([z, torch.full((4, 8), float("-inf"))], 1).requires_grad_(True)
    mref = torch.cat([zr, torch.full((4, 8), float("-inf"))], 1).requires_grad_(True)
    out = token_extra_stats(masked, lab, top_k=50, ref_logits=mref, kl_direction=direction, backend="torch")
    plain = token_extra_stats(z, lab, top_k=40, ref_logits=zr, kl_direction=direction, backend="torch")
    for f in ("topk_entropy", "kl"):
        torch.testing.assert_close(getattr(out, f), getattr(plain, f), atol=1e-5, rtol=1e-5)
    out.kl.sum().backward()
    assert torch.isfinite(masked.grad).all() and (masked.grad[1] == 0).all() and (masked.grad[:, 40:] == 0).all()
    assert mref.grad is None


def test_bf16_logits_and_bad_arguments():
    z, zr, lab = data((2, 5, 100), seed=6)
    out = token_extra_stats(z.bfloat16(), lab, top_k=20, ref_logits=zr.bfloat16(), backend="torch")
    ref = extra_stats_reference(z.bfloat16(), lab, top_k=20, ref_logits=zr.bfloat16())
    torch.testing.assert_close(out.kl, ref.kl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.topk_entropy, ref.topk_entropy, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="kl_direction"):
        token_extra_stats(z, lab, ref_logits=zr, kl_direction="forward")
    with pytest.raises(ValueError, match="ref_logits"):
        token_extra_stats(z, lab, ref_logits=zr[:, :3])
    with pytest.raises(ValueError, match="top_k"):
        token_extra_stats(z, lab, top_k=0)
    none = token_extra_stats(z, lab, backend="torch")
    assert none.topk_entropy is None and none.kl is None


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_fused_head_matches_the_logits_path(direction):
    """linear_extra_stats equals token_extra_stats on the materialised logits: values, and the
    KL's gradients on hidden states, weight and bias (several chunks, ignored tokens)."""
    from qtune.kernels import linear_extra_stats

    g = torch.Generator().manual_seed(8)
    h0, w0, b0 = torch.randn(2, 6, 16, generator=g), torch.randn(70, 16, generator=g) / 3, torch.randn(70, generator=g)
    hr, wr = torch.randn(2, 6, 12, generator=g), torch.randn(70, 12, generator=g) / 3
    lab = torch.randint(0, 70, (2, 6), generator=g)
    lab[0, :3] = -100
    wt = torch.rand(2, 6, generator=g)
    outs, grads = [], []
    for fused in (True, False):
        h, w, b = (t.clone().requires_grad_(True) for t in (h0, w0, b0))
        if fused:
            out = linear_extra_stats(
                h, w, lab, bias=b, top_k=20, ref_hidden=hr, ref_weight=wr, kl_direction=direction, chunk_size=4
            )
        else:
            out = token_extra_stats(h @ w.T + b, lab, top_k=20, ref_logits=hr @ wr.T, kl_direction=direction)
        (out.kl * wt).sum().backward()
        outs.append(out)
        grads.append((h.grad, w.grad, b.grad))
    for f in ("topk_entropy", "kl"):
        torch.testing.assert_close(getattr(outs[0], f), getattr(outs[1], f), atol=1e-5, rtol=1e-5)
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (grads[0][0][0, :3] == 0).all()
    only_k = linear_extra_stats(h0, w0, lab, top_k=5)
    assert only_k.kl is None and only_k.topk_entropy.shape == lab.shape


def test_fused_head_under_autocast():
    """bf16 autocast (Lightning's bf16-mixed): the fused KL runs on the cast tensors and its
    gradients reach the fp32 parameters, close to the fp32 result."""
    from qtune.kernels import linear_extra_stats

    g = torch.Generator().manual_seed(9)
    h0, w0 = torch.randn(2, 5, 16, generator=g), torch.randn(50, 16, generator=g) / 3
    hr, wr = torch.randn(2, 5, 16, generator=g), torch.randn(50, 16, generator=g) / 3
    lab = torch.randint(0, 50, (2, 5), generator=g)
    results = []
    for cast in (True, False):
        h, w = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cast):
            out = linear_extra_stats(h, w, lab, top_k=20, ref_hidden=hr, ref_weight=wr, chunk_size=3)
        out.kl.sum().backward()
        assert out.kl.dtype == torch.float32 and w.grad.dtype == torch.float32
        results.append((out.kl.detach(), out.topk_entropy, h.grad, w.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=5e-2, rtol=5e-2)
