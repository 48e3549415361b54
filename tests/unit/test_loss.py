import torch
import torch.nn.functional as F

from qtune.pruning.batch_stats import masked_mean, sample_scores
from qtune.pruning.loss import masked_token_mean
from qtune.kernels import token_stats


def _batch(seed=0, b=4, t=6, v=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :2] = -100  # prompt positions
    labels[2, 4:] = -100  # padding
    return logits, labels


def test_no_mask_equals_plain_token_mean_cross_entropy():
    logits, labels = _batch()
    stats = token_stats(logits, labels, backend="torch")
    ours = masked_token_mean(stats.loss, stats.valid)
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_token_mask_and_dropped_rows_match_hand_formula():
    logits, labels = _batch(1)
    keep_rows = torch.tensor([True, False, True, True])
    token_mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(2)) > 0.3
    stats = token_stats(logits, labels, backend="torch")
    mask = stats.valid & token_mask & keep_rows[:, None]
    ours = masked_token_mean(stats.loss, mask)
    # plain formula: cross entropy of the selected tokens only
    sel_labels = torch.where(mask, labels, torch.full_like(labels, -100))
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), sel_labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(ours, ref)


def test_sample_weights_scale_contributions_with_unweighted_denominator():
    logits, labels = _batch(3)
    stats = token_stats(logits, labels, backend="torch")
    w = torch.tensor([2.0, 1.0, 0.5, 1.0])
    ours = masked_token_mean(stats.loss, stats.valid, w)
    nll = -F.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    valid = labels != -100
    ref = (nll * valid * w[:, None]).sum() / valid.sum()
    torch.testing.assert_close(ours, ref)
    ones = masked_token_mean(stats.loss, stats.valid, torch.ones(4))
    assert torch.equal(ones, masked_token_mean(stats.loss, stats.valid))


def test_all_masked_batch_gives_zero_not_nan():
    logits, labels = _batch(4)
    stats = token_stats(logits, labels, backend="torch")
    loss = masked_token_mean(stats.loss, torch.zeros_like(stats.valid))
    assert loss.item() == 0.0


def test_sample_scores_are_response_means_and_nan_without_signal():
    logits, labels = _batch(5)
    labels[1] = -100  # a sample whose response was truncated away
    stats = token_stats(logits, labels, backend="torch")
    s = sample_scores(stats, stats.valid)
    assert torch.isnan(s["loss"][1]) and s["num_tokens"][1] == 0
    nll = -F.log_softmax(logits.detach(), -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    valid = labels[0] != -100
    torch.testing.assert_close(s["loss"][0], nll[0][valid].mean())
    assert masked_mean(torch.ones(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]])).isnan().tolist() == [False, True]
