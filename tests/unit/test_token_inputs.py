"""A token rule end to end through the statistics path, as a trainer calls it: ``lm_stats`` and
``lm_extra_stats`` on a causal LM's logits, ``token_inputs``, ``apply``, ``reduce``; losses
worked out by hand and checked with plain log_softmax formulas, gradients included."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from qtune.kernels import token_stats
from qtune.pruning.batch_stats import lm_stats
from qtune.pruning.token_inputs import lm_extra_stats, token_inputs
from qtune.strategies import build_token_rule

LN2 = math.log(2.0)


class FixedLM(torch.nn.Module):
    """A 'model' whose logits are a parameter: the gradient lands on them directly."""

    def __init__(self, logits):
        super().__init__()
        self.z = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.z)


def step(name, logits, labels, ref_logits=None, **options):
    """The loss of a rule on one batch, and the gradient on the logits."""
    model = FixedLM(logits)
    rule = build_token_rule(name, **options)
    needs = rule.needs()
    batch = {"input_ids": torch.zeros(labels.shape, dtype=torch.long), "labels": labels}
    stats = lm_stats(model, batch, backend="torch")
    shifted = labels[:, 1:]
    resp = shifted != -100
    extra = lm_extra_stats(model.z, shifted, needs, ref_logits=ref_logits, backend="torch")
    ref_loss = None
    if needs.reference_loss and ref_logits is not None:
        ref_loss = token_stats(ref_logits[:, :-1], shifted, backend="torch").loss
    inputs = token_inputs(needs, stats, resp, extra=extra, ref_loss=ref_loss)
    loss = rule.apply(inputs).reduce(stats.loss)
    loss.backward()
    return loss.detach(), model.z.grad


def hand_batch():
    # position 0 predicts label 2 (p = 1/2), position 1 predicts label 0 (p = 1/4); position 2
    # has no label (prompt), the last position predicts nothing
    row = torch.tensor([0.0, 0.0, LN2])
    logits = row.expand(1, 4, 3).clone()
    labels = torch.tensor([[-100, 2, 0, -100]])
    return logits, labels


def test_dft_and_eaft_by_hand_through_the_kernels():
    logits, labels = hand_batch()
    loss, _ = step("dft", logits, labels)
    assert float(loss) == pytest.approx((0.5 * LN2 + 0.25 * 2 * LN2) / 2, rel=1e-5)  # = ln 2 / 2
    # EAFT: V = 3 < K, so the top-K entropy is the full one, H(1/4, 1/4, 1/2) = 1.5 ln 2, the
    # same on both tokens: weight 1.5 ln 2 / ln 20 times the mean NLL (ln 2 + ln 4) / 2
    loss, _ = step("eaft", logits, labels)
    assert float(loss) == pytest.approx((1.5 * LN2) ** 2 / math.log(20), rel=1e-5)


def plain(name, z, labels, zr=None):
    """The method's loss written directly with log_softmax over the shifted logits."""
    lp = F.log_softmax(z[:, :-1], -1)
    y = labels[:, 1:]
    resp = y != -100
    lpy = lp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    n = resp.sum()
    if name == "dft":
        return -(lpy.exp().detach() * lpy)[resp].sum() / n
    if name == "eaft":
        q = z.detach()[:, :-1].topk(20, -1).values.softmax(-1)
        return -((-(q * q.log()).sum(-1) / math.log(20)) * lpy)[resp].sum() / n
    if name == "asft":
        lr = F.log_softmax(zr[:, :-1], -1)
        kl = (lr.exp() * (lr - lp)).sum(-1)
        return (-(lpy.exp().detach() * lpy) + 0.1 * kl)[resp].sum() / n
    # rho1: mean NLL over the top 60 % of the batch's response tokens by L - L_ref
    lref = -F.log_softmax(zr[:, :-1], -1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    excess = (-lpy - lref).detach()[resp]
    k = math.ceil(0.6 * int(n))
    chosen = excess.argsort(descending=True)[:k]
    return (-lpy[resp])[chosen].sum() / k


@pytest.mark.parametrize("name", ["dft", "eaft", "asft", "rho1"])
def test_rule_losses_match_plain_formulas_with_gradients(name):
    g = torch.Generator().manual_seed(11)
    z = torch.randn(3, 6, 40, generator=g) * 2
    zr = z + torch.randn(3, 6, 40, generator=g)
    labels = torch.randint(0, 40, (3, 6), generator=g)
    labels[:, :2] = -100  # prompts
    labels[2, 4:] = -100  # padding
    loss, grad = step(name, z, labels, ref_logits=zr)
    w = z.clone().requires_grad_(True)
    want = plain(name, w, labels, zr)
    want.backward()
    torch.testing.assert_close(loss, want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, w.grad, atol=1e-6, rtol=1e-4)


def test_missing_inputs_are_named():
    logits, labels = hand_batch()
    with pytest.raises(ValueError, match="ref_loss"):
        step("rho1", logits, labels, ref_logits=None)
    with pytest.raises(ValueError, match="ref_logits"):
        step("asft", logits, labels)
    assert lm_extra_stats(logits, labels[:, 1:], build_token_rule("dft").needs()) is None
    stats = token_stats(logits[:, :-1], labels[:, 1:], backend="torch")
    with pytest.raises(ValueError, match="TokenInputs.topk_entropy, which this step"):
        token_inputs(build_token_rule("eaft").needs(), stats, labels[:, 1:] != -100)
    with pytest.raises(ValueError, match="TokenInputs.score, which this step"):
        token_inputs(build_token_rule("tokencleaning").needs(), stats, labels[:, 1:] != -100)
