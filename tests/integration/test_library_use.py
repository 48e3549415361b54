"""qtune as a plain Lightning callback: a user's own module, dataset and Trainer."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from qtune.lightning.callback import PruningCallback
from qtune.pruning.indexed import IndexedDataset
from qtune.strategies import build_strategy


class TinyRegressor(L.LightningModule):
    """Follows the documented protocol: loader from the callback, per-sample losses returned."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset
        self.net = torch.nn.Linear(4, 3)
        self.seen: list[int] = []

    def train_dataloader(self):
        return self.pruning.dataloader(self.dataset, batch_size=8)

    def training_step(self, batch, batch_idx):
        logits = self.net(batch["inputs"])
        per_sample = F.cross_entropy(logits, batch["labels"], reduction="none")
        w = self.pruning.sample_weights(batch["sample_id"])
        loss = (per_sample * (w if w is not None else 1.0)).mean()
        self.seen.extend(batch["sample_id"].tolist())
        return {
            "loss": loss,
            "sample_ids": batch["sample_id"],
            "scores": {"loss": per_sample.detach(), "num_tokens": torch.ones_like(per_sample)},
        }

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_plain_lightning_module_trains_on_the_plan(tmp_path):
    g = torch.Generator().manual_seed(0)
    ds = IndexedDataset(TensorDataset(torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)))
    pruning = PruningCallback(build_strategy("random", seed=1, keep_ratio=0.25), seed=1)
    module = TinyRegressor(ds)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[pruning],
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    assert len(module.seen) == 3 * 10  # a quarter of 40 samples, three epochs
    per_epoch = [sorted(module.seen[i * 10 : (i + 1) * 10]) for i in range(3)]
    for e, entry in enumerate(pruning.history):
        assert entry["planned_samples"] == 10 and entry["samples_trained"] == 10
    # the sample ids the model saw are exactly the strategy's plans
    from qtune.strategies import EpochContext

    strat = build_strategy("random", seed=1, keep_ratio=0.25)
    for e in range(3):
        ctx = EpochContext(epoch=e, max_epochs=3, num_samples=40, seed=1, scores=None)
        assert per_epoch[e] == strat.epoch_plan(ctx).sample_ids.tolist()
    # the statistics store holds the per-sample losses of the last epoch seen
    seen_last = per_epoch[2]
    assert (pruning.store.seen_epoch[seen_last] == 2).all()
    assert torch.isfinite(pruning.store.loss[seen_last]).all()


def test_misconfigured_trainer_is_a_clear_error(tmp_path):
    import pytest

    ds = IndexedDataset(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)))
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[PruningCallback(build_strategy("full"))],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=1"):
        trainer.fit(TinyRegressor(ds))


def test_nan_loss_is_an_error_naming_the_samples(tmp_path):
    import pytest

    x = torch.randn(16, 4)
    x[5] = float("nan")
    ds = IndexedDataset(TensorDataset(x, torch.zeros(16, dtype=torch.long)))
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[PruningCallback(build_strategy("full"))],
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(FloatingPointError, match=r"non-finite loss: \[(\d+, )*5\b"):
        trainer.fit(TinyRegressor(ds))
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing written as if it succeeded


def test_batches_carry_the_plan_weights(tmp_path):
    """InfoBatch weights reach the step on the batch, equal to the core's plan for the epoch."""

    class Recording(TinyRegressor):
        def training_step(self, batch, batch_idx):
            self.got.append((self.current_epoch, batch["sample_id"].clone(), batch.get("sample_weight")))
            return super().training_step(batch, batch_idx)

    g = torch.Generator().manual_seed(0)
    ds = IndexedDataset(TensorDataset(torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)))
    pruning = PruningCallback(build_strategy("infobatch", seed=0, prune_ratio=0.5), seed=0, num_samples=40)
    module = Recording(ds)
    module.got = []
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[pruning],
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    pruning.core.keep_past_plans = True
    trainer.fit(module)
    plan = pruning.plans[1]  # epoch 1 plans from epoch 0's losses: some samples boosted
    assert plan.weights is not None and (plan.weights > 1).any()
    expected = dict(zip(plan.sample_ids.tolist(), plan.weights.tolist()))
    seen = [(ids, w) for e, ids, w in module.got if e == 1]
    assert seen and all(w is not None for _, w in seen)
    for ids, w in seen:
        assert w.tolist() == pytest.approx([expected[i] for i in ids.tolist()])
    assert all(w is None or (w == 1).all() for e, _, w in module.got if e == 0)  # no scores yet
