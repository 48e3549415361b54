"""The run's checkpoint: one file, ``last.ckpt``, that always holds the latest resumable state."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Rewrites ``last.ckpt`` after every training epoch and, with ``every_n_train_steps``,
    every that many optimiser steps (except on an epoch's last batch); keeps no other file.

    Lightning's ModelCheckpoint with ``save_top_k=0`` writes ``last.ckpt`` at an epoch end
    only when it also wrote a top-k file at that step, that is never, so a run stopped between
    epochs would have nothing (or only a mid-epoch state) to resume from. The epoch-end save
    here also runs when a step-triggered save already happened at the same step, so the file
    holds the epoch's end-of-epoch bookkeeping, not the state just before it. Lightning runs
    checkpoint callbacks after the others, so the pruning callback has booked the epoch by then.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None) -> None:
        super().__init__(
            dirpath=dirpath,
            save_last=True,
            save_top_k=0,
            save_on_train_epoch_end=True,
            every_n_train_steps=every_n_train_steps or None,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # the epoch-end save follows at this same step. A step save here would be restored
            # by Lightning as a finished epoch whose batch count carries into the next epoch,
            # which then trains only its last batches when it is the longer one
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
