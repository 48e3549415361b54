"""SIGTERM and SIGINT stop a run at the next batch boundary with a resumable ``last.ckpt``.

SLURM and Kubernetes send SIGTERM before a preemption; a user presses Ctrl+C. Lightning on its
own notices SIGTERM only at an epoch's end (in one process) and then exits with status 0, and
turns Ctrl+C into an exit wherever the step happens to be. Here both signals set Lightning's
SIGTERM flag; in one process the run stops after the batch in progress (several processes stop
together at Lightning's next cross-rank check), ``last.ckpt`` is written with the mid-epoch
position, and ``qtune-train`` exits with 128 + the signal's number, as a shell reports a
process killed by it. A second Ctrl+C interrupts at once.
"""

from __future__ import annotations

import signal

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException


class StopOnSignal(Callback):
    def __init__(self, checkpoint_path: str) -> None:
        self.checkpoint_path = checkpoint_path
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        lightning_handler = signal.getsignal(signal.SIGTERM)  # sets trainer.received_sigterm

        def handler(signum, frame) -> None:
            if self.signum is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl+C: stop now
            self.signum = signum
            if callable(lightning_handler):
                lightning_handler(signum, frame)

        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: Lightning's own handling stays
            self._previous.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # several processes stop together at Lightning's own cross-rank check before the next
        # batch; an epoch's last batch goes on to its end-of-epoch bookkeeping and save
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if self.signum is not None and trainer.world_size == 1 and not last:
            raise SIGTERMException()

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, SIGTERMException):
            return
        if self.signum is None:
            self.signum = signal.SIGTERM
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            trainer.save_checkpoint(self.checkpoint_path)  # mid-epoch: the epoch-end save did not run

    def _restore(self) -> None:
        """Lightning's handlers back (before Lightning's teardown puts back the originals)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)
