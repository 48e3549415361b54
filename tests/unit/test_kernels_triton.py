"""The Triton kernels: for real on CUDA, else under TRITON_INTERPRET=1 in a subprocess.

TRITON_INTERPRET must be set before triton is first imported, and other tests (torch.compile)
import it early, so without a GPU the single test here re-runs this file in a fresh interpreter
with the variable set; the cases then run on CPU tensors with a small forced tile width so that
rows span several tiles and end in a partial one.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERP
DEV = "cuda" if CUDA else "cpu"
FIELDS = ("loss", "entropy", "el2n", "p_label", "correct", "margin")

if not (INTERP or CUDA):

    def test_triton_under_interpreter():
        """About 12 s on an idle 2-core machine (mostly interpreter start-up)."""
        pytest.importorskip("triton")
        env = dict(os.environ, TRITON_INTERPRET="1")
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
        assert " passed" in res.stdout and " failed" not in res.stdout
else:
    from qtune.kernels import linear_token_stats, token_stats_reference
    from qtune.kernels.autograd import StatsFunction
    from qtune.kernels.triton_stats import TritonStats

    def run(logits, labels, block):
        """TritonStats through the autograd wrapper, with a pinned tile width."""
        v = logits.shape[-1]
        lab = labels.reshape(-1)
        valid = lab != -100
        y = torch.where(valid, lab, torch.zeros_like(lab))
        rows = StatsFunction.apply(logits.reshape(-1, v), y, valid, TritonStats(block))
        return [r.view(labels.shape) for r in rows[:6]]

    def check(logits, labels, block, atol=2e-5, gtol=1e-6):
        g = torch.Generator().manual_seed(0)
        w = (torch.rand(labels.shape, generator=g) + 0.1).to(DEV)
        x_ref = logits.detach().clone().requires_grad_(True)
        ref = token_stats_reference(x_ref, labels)
        (ref.loss * w).sum().backward()
        x = logits.detach().clone().requires_grad_(True)
        out = run(x, labels, block)
        (out[0] * w).sum().backward()
        for f, got in zip(FIELDS, out):
            torch.testing.assert_close(got, getattr(ref, f).float(), atol=atol, rtol=2e-5, msg=f)
        torch.testing.assert_close(x.grad.float(), x_ref.grad.float(), atol=gtol, rtol=1e-3)
        assert (x.grad[labels == -100] == 0).all()

    def labels_for(shape, v, seed=1, frac=0.3):
        g = torch.Generator().manual_seed(seed)
        lab = torch.randint(0, v, shape, generator=g)
        lab[torch.rand(shape, generator=g) < frac] = -100
        return lab.to(DEV)

    def randn(*shape, scale=3.0, seed=2):
        return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(DEV)

    @pytest.mark.parametrize("v,block", [(300, 64), (129, 128), (64, 64), (1000, 256)])
    def test_triton_parity(v, block):
        logits = randn(3, 7, v)
        labels = labels_for((3, 7), v)
        labels[0, 0] = logits[0, 0].argmax()
        labels[2] = -100  # an entirely ignored sample
        check(logits, labels, block)

    def test_triton_extreme_ties_bf16_classification():
        logits = randn(12, 300, scale=1e4)
        labels = labels_for((12,), 300, frac=0.1)
        logits[::2, 5] = 1e4
        labels[::4] = 5
        check(logits, labels, 64, atol=1e-3, gtol=1e-5)
        flat = torch.zeros(4, 50, device=DEV)
        check(flat, torch.tensor([0, 3, 49, -100], device=DEV), 16)
        check(randn(4, 7, 300).bfloat16(), labels_for((4, 7), 300), 64, atol=3e-5, gtol=1e-2)
        check(randn(16, 10), labels_for((16,), 10, frac=0.0), 16)  # one token per sample

    def test_triton_default_config_and_linear():
        """The public entry points with backend='triton' (default tile choice)."""
        from qtune.kernels import token_stats

        logits, labels = randn(2, 5, 333), labels_for((2, 5), 333)
        out = token_stats(logits, labels, backend="triton")
        ref = token_stats_reference(logits, labels)
        for f in FIELDS:
            torch.testing.assert_close(getattr(out, f), getattr(ref, f), atol=2e-5, rtol=2e-5)
        h = randn(2, 5, 8).requires_grad_(True)
        w = randn(333, 8, seed=5).requires_grad_(True)
        out = linear_token_stats(h, w, labels, backend="triton", chunk_size=3)
        wt = torch.rand(2, 5, device=DEV)
        (out.loss * wt).sum().backward()
        h1, w1 = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
        (token_stats_reference(h1 @ w1.T, labels).loss * wt).sum().backward()
        torch.testing.assert_close(h.grad, h1.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(w.grad, w1.grad, atol=1e-4, rtol=1e-4)

    def test_triton_edges_confident_masked_and_in_place():
        """EL2N keeps its digits for confident tokens (float64 definition), -inf logits give
        finite statistics equal to the row without them, outputs can be modified in place."""
        import torch.nn.functional as F

        z = randn(4, 300, scale=1.0)
        y = torch.tensor([5, 70, 150, 299], device=DEV)
        z[torch.arange(4), y] = z.max(-1).values + torch.tensor([2.0, 12.0, 20.0, 24.0], device=DEV)
        p64 = torch.softmax(z.double(), -1)
        want = (p64 - F.one_hot(y, 300).double()).square().sum(-1).sqrt()
        got = run(z, y, 64)[2].double()
        torch.testing.assert_close(got, want, rtol=2e-3, atol=0)
        masked = torch.cat([z[:, :200], torch.full((4, 100), float("-inf"), device=DEV)], 1)
        y2 = torch.tensor([5, 70, 150, 199], device=DEV)
        ref = token_stats_reference(z[:, :200], y2)
        out = run(masked.requires_grad_(True), y2, 64)
        for f, o in zip(FIELDS, out):
            torch.testing.assert_close(o, getattr(ref, f), atol=2e-5, rtol=2e-5, msg=f)
        out[1].mul_(2)
        out[0].sum().backward()
        assert (masked.grad[:, 200:] == 0).all()
        z2 = randn(3, 300)
        y3 = torch.tensor([1, 200, 7], device=DEV)
        z2[1, 200] = float("-inf")  # the label itself masked: loss inf, the rest finite
        got, ref = run(z2, y3, 64), token_stats_reference(z2, y3)
        assert got[0][1] == float("inf")
        for f, o in list(zip(FIELDS, got))[1:]:
            torch.testing.assert_close(o, getattr(ref, f), atol=2e-5, rtol=2e-5, msg=f)

    def test_tile_timing_keeps_the_logits_an_in_place_gradient_reads(monkeypatch):
        """On CUDA the first big call times several tile widths by launching each: with
        `out=z` (the fused linear backward) those trial launches must not write over z."""
        import qtune.kernels.triton_stats as ts

        def timing(kind, z, launch):  # what _config does on a GPU: repeated trial launches
            for cfg in ((32, 4), (64, 4)):
                launch(*cfg)
                launch(*cfg)
            return 64, 4

        monkeypatch.setattr(ts, "_config", timing)
        z, lab = randn(6, 300), labels_for((6,), 300)
        valid = lab != -100
        y = torch.where(valid, lab, torch.zeros_like(lab))
        lse = ts.TritonStats(64).stats(z, y, valid)[6]
        g = torch.rand(6, device=DEV)
        fresh = ts.TritonStats(64).grad(z, y, valid, lse, g)
        zz = z.clone()
        got = ts.TritonStats().grad(zz, y, valid, lse, g, out=zz)
        assert got.data_ptr() == zz.data_ptr()
        torch.testing.assert_close(got, fresh, atol=0, rtol=0)

    def test_triton_extra_stats_fall_back_to_the_chunked_path():
        """Top-K entropy and KL have no Triton kernel: backend='triton' gives the reference's
        values and KL gradient through the chunked path on the same device."""
        from qtune.kernels import extra_stats_reference, token_extra_stats

        z, zr, lab = randn(2, 5, 64), randn(2, 5, 64, seed=7), labels_for((2, 5), 64)
        x, x_ref = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        out = token_extra_stats(x, lab, top_k=20, ref_logits=zr, backend="triton")
        ref = extra_stats_reference(x_ref, lab, top_k=20, ref_logits=zr)
        out.kl.sum().backward()
        ref.kl.sum().backward()
        for f in ("topk_entropy", "kl"):
            torch.testing.assert_close(getattr(out, f), getattr(ref, f), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-4)

    @pytest.mark.gpu  # large shapes only on a real GPU (skipped without one: conftest)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_triton_cuda_large(dtype):
        logits = randn(2048, 50257).to(dtype)
        labels = labels_for((2048,), 50257)
        check(logits, labels, None, atol=5e-5 if dtype == torch.float32 else 1e-4, gtol=1e-5)
