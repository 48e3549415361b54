"""The engine's batch-plan step: scored rows, kept rows and token masks give the plain formula."""

import torch
import torch.nn.functional as F
from tiny_hf import save_tiny_llama

from qtune.data.sft import collate_sft
from qtune.lightning.module import QTuneModule
from qtune.models.hf import load_hf_causal_lm
from qtune.strategies import BatchPlan, PruningStrategy


class KeepEvenIds(PruningStrategy):
    """Keeps rows with an even sample id and, in them, every other response token."""

    uses_batch_plan = True

    def __init__(self, scoring="separate", loss_denominator="response"):
        super().__init__(0)
        self.batch_scoring, self.loss_denominator = scoring, loss_denominator
        self.seen = None

    def batch_plan(self, stats):
        self.seen = stats
        keep = stats.sample_ids % 2 == 0
        tm = torch.zeros_like(stats.response_mask)
        tm[:, ::2] = True
        return BatchPlan(keep=keep, token_mask=tm, info={"kept": keep.sum()})


def _batch():
    g = torch.Generator().manual_seed(0)
    items = []
    for i, (p, r) in enumerate([(3, 4), (5, 2), (2, 6), (4, 3)]):
        ids = torch.randint(3, 40, (p + r,), generator=g)
        labels = ids.clone()
        labels[:p] = -100
        items.append({"sample_id": i + 10, "input_ids": ids, "labels": labels})
    return collate_sft(items, pad_id=0)


def _reference_loss(model, batch, denominator="response"):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:].clone()
    keep = (batch["sample_id"] % 2 == 0)[:, None]
    tm = torch.zeros_like(labels, dtype=torch.bool)
    tm[:, ::2] = True
    sel = (labels != -100) & keep & tm
    nll = F.cross_entropy(out.reshape(-1, out.shape[-1]), labels.clamp(min=0).reshape(-1), reduction="none").view(
        labels.shape
    )
    denom = sel.sum() if denominator == "response" else batch["attention_mask"][:, 1:].sum()
    return (nll * sel).sum() / denom, sel.sum()


def _module(tmp_path, strategy):
    model, _ = load_hf_causal_lm(str(save_tiny_llama(tmp_path / "m")))
    model.config.attention_dropout = 0.0
    return QTuneModule(model, task="sft", kernel_backend="torch", pruning_strategy=strategy)


def test_separate_and_reuse_scoring_give_the_plain_loss(tmp_path):
    batch = _batch()
    for scoring in ("separate", "reuse"):
        module = _module(tmp_path, KeepEvenIds(scoring))
        module.eval()  # no dropout: the two forwards must agree
        out = module.training_step(batch, 0)["record"]
        ref, n_tokens = _reference_loss(module.model, batch)
        torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
        assert int(out.tokens_trained) == int(n_tokens)
        assert int(out.samples_trained) == 2
        assert out.loss.requires_grad
        seen = module.pruning_strategy.seen
        # the strategy saw every row, with response-only sample losses
        assert seen.sample_ids.tolist() == [10, 11, 12, 13]
        assert torch.isfinite(seen.sample_ppl).all() and (seen.sample_ppl >= 1).all()
        if scoring == "separate":  # scoring forward counted apart from the trained forward
            assert int(out.scoring_tokens) == int(batch["attention_mask"].sum())
            kept_tokens = batch["attention_mask"][[0, 2]].sum()
            assert int(out.forward_tokens) == int(kept_tokens)


def test_all_attended_denominator(tmp_path):
    batch = _batch()
    module = _module(tmp_path, KeepEvenIds("separate", "all_attended"))
    module.eval()
    out = module.training_step(batch, 0)["record"]
    ref, _ = _reference_loss(module.model, batch, "all_attended")
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)


def test_nothing_kept_still_backpropagates_zero(tmp_path):
    class DropAll(KeepEvenIds):
        def batch_plan(self, stats):
            return BatchPlan(keep=torch.zeros_like(stats.sample_ids, dtype=torch.bool))

    module = _module(tmp_path, DropAll())
    out = module.training_step(_batch(), 0)["record"]
    assert out.loss.item() == 0.0 and int(out.samples_trained) == 0
    out.loss.backward()  # a graph exists, so every DDP rank can run backward
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in module.parameters())
