"""Reweighting token rules (dft, eaft, asft): loss values worked out by hand on fixed small
batches, and losses and gradients against plain PyTorch formulas from logits."""

import math

import pytest
import torch
import torch.nn.functional as F

from qtune.strategies import TokenInputs, build_token_rule
from qtune.strategies.token_eaft import eaft_weights

LN2 = math.log(2.0)


def test_dft_loss_by_hand():
    # p(y) = 0.5, 0.25 on two response tokens, a third token without a label:
    # (0.5 ln 2 + 0.25 ln 4) / 2 = ln 2 / 2
    p = torch.tensor([[0.5, 0.25, 0.8]])
    resp = torch.tensor([[True, True, False]])
    loss = -p.log()
    d = build_token_rule("dft").apply(TokenInputs(loss=loss, response_mask=resp, p_label=p))
    assert d.weights.tolist() == [[0.5, 0.25, 0.0]]
    assert float(d.reduce(loss)) == pytest.approx(LN2 / 2, rel=1e-6)
    assert (int(d.tokens_kept), int(d.tokens_trained), int(d.denominator)) == (2, 2, 2)


def test_eaft_loss_by_hand():
    # normalised entropies 1, 1/2, 0 (ln 20 = ln K): (1*1 + 0.5*2 + 0*3) / 3 = 2/3
    h = torch.tensor([[math.log(20), 0.5 * math.log(20), 0.0, 1.0]])
    loss = torch.tensor([[1.0, 2.0, 3.0, 7.0]])
    resp = torch.tensor([[True, True, True, False]])
    d = build_token_rule("eaft").apply(TokenInputs(loss=loss, response_mask=resp, topk_entropy=h))
    assert float(d.reduce(loss)) == pytest.approx(2 / 3, rel=1e-6)
    assert int(d.tokens_trained) == 3 and int(d.denominator) == 3  # a weight-0 token still counts
    assert d.weights[0, 1] == pytest.approx(0.5)
    sq = eaft_weights(h, resp, alpha=2.0)
    assert sq[0, :2].tolist() == pytest.approx([1.0, 0.25])
    raw = build_token_rule("eaft", divide_by_log_k=False).apply(
        TokenInputs(loss=loss, response_mask=resp, topk_entropy=h)
    )
    assert raw.weights[0, 0] == pytest.approx(math.log(20))  # axolotl's H without / ln K


def test_asft_loss_by_hand():
    # DFT term ln 2 / 2 as above, plus 0.1 * mean KL = 0.1 * (0.2 + 0.4) / 2
    p = torch.tensor([[0.5, 0.25, 0.9]])
    kl = torch.tensor([[0.2, 0.4, 5.0]])
    resp = torch.tensor([[True, True, False]])
    rule = build_token_rule("asft")
    assert rule.kl_weight == 0.1 and rule.needs().reference_kl == "ref_policy" and rule.needs().reference_model
    d = rule.apply(TokenInputs(loss=-p.log(), response_mask=resp, p_label=p, kl=kl))
    assert float(d.reduce(-p.log())) == pytest.approx(LN2 / 2 + 0.03, rel=1e-6)
    with pytest.raises(ValueError, match="kl"):
        rule.apply(TokenInputs(loss=-p.log(), response_mask=resp, p_label=p))
    # a sample weight scales the row's whole loss, KL anchor included
    assert float(d.reduce(-p.log(), torch.tensor([3.0]))) == pytest.approx(3 * (LN2 / 2 + 0.03), rel=1e-6)


def batch(seed=0, v=30):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, 5, v, generator=g) * 2
    y = torch.randint(0, v, (3, 5), generator=g)
    y[0, :2] = -100
    y[2, 4] = -100
    return z, y


def plain_topk_entropy(z, k):
    top = z.topk(k, dim=-1).values
    p = top.softmax(-1)
    return -(p * p.log()).sum(-1)


@pytest.mark.parametrize("name", ["dft", "eaft", "asft"])
def test_loss_and_gradient_match_plain_pytorch(name):
    """The rule's loss from plain tensors equals the method's formula written with log_softmax,
    and so does its gradient with respect to the logits."""
    z0, y = batch()
    zr = torch.randn(z0.shape, generator=torch.Generator().manual_seed(9))
    resp = y != -100
    yy = y.clamp(min=0).unsqueeze(-1)

    z = z0.clone().requires_grad_(True)
    logp = F.log_softmax(z, -1)
    nll = -logp.gather(-1, yy).squeeze(-1)
    # p_label handed over with its graph: the rule itself must stop the gradient (sg)
    inputs = TokenInputs(loss=nll, response_mask=resp, p_label=(-nll).exp())
    if name == "eaft":
        inputs.topk_entropy = plain_topk_entropy(z.detach(), 20)
    if name == "asft":
        logr = F.log_softmax(zr, -1)
        inputs.kl = (logr.exp() * (logr - logp)).sum(-1)
    got = build_token_rule(name).apply(inputs).reduce(nll)
    got.backward()

    w = z0.clone().requires_grad_(True)
    lp = F.log_softmax(w, -1)
    lpy = lp.gather(-1, yy).squeeze(-1)
    n = resp.sum()
    if name == "dft":
        want = -(lpy.exp().detach() * lpy)[resp].sum() / n
    elif name == "eaft":
        top = w.detach().topk(20, -1).values.softmax(-1)
        gate = -(top * top.log()).sum(-1) / math.log(20)
        want = -(gate * lpy)[resp].sum() / n
    else:
        lr = F.log_softmax(zr, -1)
        kl = F.kl_div(lp, lr, log_target=True, reduction="none").sum(-1)  # KL(ref || policy)
        want = (-(lpy.exp().detach() * lpy) + 0.1 * kl)[resp].sum() / n
    want.backward()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(z.grad, w.grad, atol=1e-6, rtol=1e-5)
    assert (z.grad[~resp] == 0).all()


def test_sample_weights_rescale_rows_not_the_denominator():
    p = torch.tensor([[0.5, 0.5], [0.25, 0.25]])
    resp = torch.ones(2, 2, dtype=torch.bool)
    d = build_token_rule("dft").apply(TokenInputs(loss=-p.log(), response_mask=resp, p_label=p))
    plain = float(d.reduce(-p.log()))
    assert float(d.reduce(-p.log(), torch.tensor([2.0, 0.0]))) == pytest.approx(2 * (2 * 0.5 * LN2) / 4)
    assert plain == pytest.approx((2 * 0.5 * LN2 + 2 * 0.25 * 2 * LN2) / 4)
