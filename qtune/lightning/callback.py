"""PruningCallback: the Lightning integration of :class:`qtune.pruning.core.PruningCore`.

It forwards Lightning's hooks to the core (plan at the epoch's loader, record after each step,
finish at the epoch's end, state in checkpoints), builds the epoch's train loader and runs
scoring passes; the core holds every decision and number. Protocol for a LightningModule
(qtune's own module follows it; so can a user's):

1. Dataset items are dicts with ``sample_id`` (wrap a plain dataset in
   :class:`qtune.pruning.indexed.IndexedDataset`).
2. ``train_dataloader()`` returns ``callback.dataloader(dataset, batch_size=..., ...)`` (the
   callback is ``self.pruning`` on the module); the Trainer runs with
   ``reload_dataloaders_every_n_epochs=1`` and ``use_distributed_sampler=False``.
3. Batches arrive with the plan's loss weights as ``batch["sample_weight"]`` [B] (when the
   strategy weights samples) and, when the data marks them, wrong-answer token flags as
   ``batch["wrong_tokens"]`` [B, L] (label coordinates). With ``dataloader(...,
   packing=Packing(...))`` batches are packed rows (``seg``, ``position_ids``; weights stay
   per sample, [S] in ``sample_id`` order; flags follow the rows, [R, L]).
4. ``training_step`` returns a dict with ``loss`` and either ``record`` (a
   :class:`qtune.pruning.train_step.StepRecord`, what :func:`~qtune.pruning.train_step.train_step`
   gives; qtune's module does this) or, to feed the statistics store, ``sample_ids`` and ``scores``
   (a dict of per-sample tensors named as in ``StatisticsStore`` FIELDS, plus ``num_tokens``);
   optionally the counters of ``qtune.pruning.core.COUNTERS``, ``trained_mask`` and
   ``batch_info``.
5. Strategies that need a scoring pass call ``pl_module.score_batch(batch)`` (no grad), which
   returns ``(sample_ids, scores, forward_tokens)``.
6. A module with a ``pruning_strategy`` attribute left None gets the strategy (batch-level
   strategies plan inside its training step).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from qtune.data.packed_collate import collate_packed
from qtune.data.packing_config import Packing
from qtune.pruning.core import COUNTERS, PruningCore, plan_hash  # noqa: F401  (re-exported)
from qtune.pruning.distributed import Collective
from qtune.pruning.packed_epoch import PackedRows, pack_epoch, sample_lengths
from qtune.pruning.sampler import PlanSampler, shard_plan
from qtune.strategies.base import PruningStrategy, epoch_generator


class PruningCallback(Callback):
    """`strategy_config` (the strategy's settings, e.g. its Hydra node) is stored in
    checkpoints, and resuming with other settings or another seed is refused."""

    def __init__(self, strategy: PruningStrategy, **core_options) -> None:
        """`core_options` are :class:`PruningCore`'s (seed, num_samples, item_meta, export_dir,
        strategy_config, budget, data_fingerprint)."""
        self.core = PruningCore(strategy, **core_options)
        self._trainer = None
        self._module = None

    # the core's state, read by the run's summary and by library users
    strategy = property(lambda self: self.core.strategy)
    store = property(lambda self: self.core.store)
    plans = property(lambda self: self.core.plans)
    history = property(lambda self: self.core.history)
    totals = property(lambda self: self.core.totals)
    items = property(lambda self: self.core.items)
    seed = property(lambda self: self.core.seed)
    export_dir = property(lambda self: self.core.export_dir)

    @property
    def state_key(self) -> str:
        # one key whatever the strategy, so resuming with another strategy is caught, not ignored
        return "PruningCallback"

    def _attach(self, trainer) -> None:
        self._trainer = trainer
        self.core.comm = Collective(trainer)

    # -- Lightning hooks --------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "PruningCallback needs Trainer(reload_dataloaders_every_n_epochs=1): "
                "each epoch's loader is built from that epoch's plan"
            )
        if getattr(trainer, "_accelerator_connector").use_distributed_sampler:
            raise ValueError(
                "PruningCallback needs Trainer(use_distributed_sampler=False): "
                "the plan sampler shards the plan over ranks itself"
            )
        self._attach(trainer)
        self._module = pl_module
        pl_module.pruning = self  # the loader protocol for a user's module
        if getattr(pl_module, "pruning_strategy", False) is None:
            pl_module.pruning_strategy = self.strategy
        if self.items is not None:
            self.items.to(pl_module.device)

    def on_train_start(self, trainer, pl_module) -> None:
        self._settle_resume(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        core = self.core
        if core.resuming(trainer.current_epoch):
            self._settle_resume(trainer)  # resumed mid-epoch: keep this epoch's restored rows
            return
        core.epoch_clock.start()
        core.begin_epoch()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.core.epoch_clock.pause()  # validation is not the epoch's training time

    def on_validation_end(self, trainer, pl_module) -> None:
        self.core.epoch_clock.resume()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.core.record_batch(outputs, batch_idx)

    def record_batch_info(self, info: dict[str, float]) -> None:
        """Per-batch numbers of a batch plan, summed per epoch (or return ``batch_info``)."""
        self.core.record_batch_info(info)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.core.check_finite(trainer.current_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Book the epoch in the core (all ranks) and log its history entry."""
        self._log(trainer, self.core.finish_epoch(trainer.current_epoch))

    def _settle_resume(self, trainer) -> None:
        self._log(trainer, self.core.settle_resume(trainer.current_epoch))

    @staticmethod
    def _log(trainer, entry: dict[str, Any] | None) -> None:
        if entry is None:
            return
        loggable = {f"prune/{k}": float(v) for k, v in entry.items() if isinstance(v, (int, float)) and k != "epoch"}
        for logger in trainer.loggers if loggable else []:
            logger.log_metrics(loggable, step=trainer.global_step)
            logger.save()  # written now: a crash before the next flush must not lose it

    # -- checkpoint state ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._trainer is not None:
            self.core.comm = Collective(self._trainer)
        epoch = self._trainer.current_epoch if self._trainer is not None else 0
        return self.core.state_dict(epoch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._trainer is not None:
            self.core.comm = Collective(self._trainer)
        self.core.load_state_dict(state)

    def check_finite(self, epoch: int) -> None:
        self.core.check_finite(epoch)

    def run_shares(self, epochs: int) -> dict[str, float]:
        return self.core.run_shares(epochs)

    def sample_weights(self, sample_ids: torch.Tensor) -> torch.Tensor | None:
        """The plan's loss weights of these samples (also on the batch as ``sample_weight``)."""
        return self.core.sample_weights(sample_ids)

    def wrong_tokens(self, sample_ids: torch.Tensor, length: int) -> torch.Tensor | None:
        return self.core.wrong_tokens(sample_ids, length)

    # -- plans ---------------------------------------------------------------------------------
    def dataloader(
        self, dataset, batch_size: int, collate_fn=None, num_workers: int = 0, packing: Packing | None = None, **kwargs
    ) -> DataLoader:
        """The train loader of the current epoch: only the planned ids, sharded for this rank,
        and batches that carry the plan's extras (``sample_weight``, ``wrong_tokens``). With
        ``packing`` the planned samples are packed into rows and ``batch_size`` counts rows
        (batches from :func:`qtune.data.packed_collate.collate_packed`; ``collate_fn`` then
        serves the padded scoring passes only)."""
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("PruningCallback is not attached: pass it in Trainer(callbacks=[...])")
        core = self.core
        core.ensure_store(len(dataset))
        self._dataset, self._collate = dataset, collate_fn
        core.batch_size, self._num_workers = batch_size, num_workers
        epoch = trainer.current_epoch
        self._settle_resume(trainer)  # an epoch the checkpoint holds complete is booked first
        plan = core.plan_epoch(epoch, int(trainer.max_epochs or 1), self.scoring_pass)
        items, collate = dataset, core.batch_extras(collate_fn)
        ids = plan.sample_ids
        core.packing_layout = None
        if packing is not None:
            packed, counts = pack_epoch(
                ids.numpy(), self._lengths(dataset), packing, seed=self.seed, epoch=epoch, rows_per_batch=batch_size
            )
            plan.info.update(counts)  # the epoch's history entry records them
            core.packing_layout = {"max_tokens_per_row": packed.max_tokens_per_row, "policy": packing.policy}
            items, ids = PackedRows(dataset, packed), torch.arange(packed.num_rows)
            cut = packed.max_tokens_per_row
            collate = core.batch_extras(partial(collate_packed, pad_id=packing.pad_id, max_tokens_per_row=cut))
        # rows are already in a (seed, epoch) order: sharded as they come
        skip = core.samples_to_skip(epoch, batch_size, key="config key batch_size")
        sampler = PlanSampler(
            ids,
            seed=self.seed,
            epoch=epoch,
            skip=skip,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            shuffle=packing is None,
        )
        # a private generator: creating the loader's iterator must not consume the global RNG
        kwargs.setdefault("generator", epoch_generator(self.seed, epoch, salt=29))
        return DataLoader(
            items,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=num_workers,
            drop_last=False,
            **kwargs,
        )

    def _lengths(self, dataset) -> np.ndarray:
        """Tokens per training item, computed once per dataset (packing needs them every epoch)."""
        if getattr(self, "_lengths_of", (None,))[0] is not dataset:
            self._lengths_of = (dataset, sample_lengths(dataset))
        return self._lengths_of[1]

    def scoring_pass(self, epoch: int) -> None:
        """Score every training sample without gradients, sharded over ranks; the core gathers."""
        module, trainer = self._module, self._trainer
        if not hasattr(module, "score_batch"):
            raise TypeError(
                f"strategy {self.strategy.name!r} needs a scoring pass: the "
                "LightningModule must implement score_batch(batch)"
            )
        ids = shard_plan(
            torch.arange(self.store.num_samples),
            seed=self.seed,
            epoch=epoch,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            shuffle=False,
        )
        loader = DataLoader(
            self._dataset,
            batch_size=self.core.batch_size,
            sampler=ids.tolist(),
            collate_fn=self._collate,
            num_workers=0,
        )
        was_training = module.training
        module.eval()
        self.core.run_scoring_pass(
            epoch, loader, lambda batch: module.score_batch(trainer.strategy.batch_to_device(batch))
        )
        module.train(was_training)
