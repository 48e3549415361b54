"""The datamodule: train loaders come from the pruning callback's plan (packed rows with
``data.packing``), eval loaders are plain and padded (sharded without shuffling when several
ranks run, since Lightning's sampler injection is off)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from qtune.data.bundle import TaskBundle
from qtune.data.packing_config import Packing
from qtune.lightning.callback import PruningCallback


class QTuneDataModule(L.LightningDataModule):
    def __init__(
        self,
        bundle: TaskBundle,
        batch_size: int,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        packing: Packing | None = None,
    ) -> None:
        """``packing``: train batches of ``batch_size`` packed rows (eval batches stay padded)."""
        super().__init__()
        self.packing = packing
        self.bundle = bundle
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)

    def _pruning(self) -> PruningCallback:
        for cb in self.trainer.callbacks:
            if isinstance(cb, PruningCallback):
                return cb
        raise RuntimeError("QTuneDataModule needs a PruningCallback among the Trainer's callbacks")

    def train_dataloader(self) -> DataLoader:
        return self._pruning().dataloader(
            self.bundle.train,
            batch_size=self.batch_size,
            collate_fn=self.bundle.collate,
            num_workers=self.num_workers,
            packing=self.packing,
        )

    def val_dataloader(self) -> DataLoader:
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = DistributedSampler(
                self.bundle.eval, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        # a private generator: starting the loader must not draw from the global RNG, or a
        # resumed run (which may skip a validation) would draw different dropout masks
        return DataLoader(
            self.bundle.eval,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            collate_fn=self.bundle.collate,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(0),
        )
