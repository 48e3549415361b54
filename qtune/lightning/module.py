"""QTuneModule: hosts a causal LM (SFT, response-only loss) or a classifier, and runs each
training step the way the strategy's plans say: only planned samples arrive, a batch plan may
drop rows and mask tokens, plan weights rescale samples; the loss is the mean over kept,
unmasked response tokens. Everything the epoch plan adds travels on the batch
(``sample_weight``, ``wrong_tokens``); the module never calls the pruning callback, whose
hooks book what ``training_step`` returns."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from qtune.pruning.batch_stats import classifier_stats, lm_stats, sample_scores
from qtune.lightning.budget import find_budget
from qtune.pruning.planned_step import forward_tokens, response_mask
from qtune.pruning.schedule import lr_factor, training_progress
from qtune.pruning.train_step import train_step


class QTuneModule(L.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        task: str = "sft",
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        betas: tuple = (0.9, 0.95),
        scheduler: dict | None = None,
        fused_head: bool = False,
        response_only_head: bool = True,
        kernel_backend: str | None = None,
        pruning_strategy=None,
        token_step=None,
    ) -> None:
        super().__init__()
        if task not in ("sft", "classify"):
            raise ValueError(f"unknown task {task!r}; expected sft or classify")
        self.model = model
        self.task = task
        self.lr, self.weight_decay, self.betas = float(lr), float(weight_decay), tuple(betas)
        self.scheduler_cfg = dict(scheduler or {"name": "cosine", "warmup": 0.0, "min_ratio": 0.1})
        self.fused_head = bool(fused_head) and task == "sft"
        self.response_only_head = bool(response_only_head)  # see qtune.pruning.response_head
        self.kernel_backend = kernel_backend
        # batch-level strategies plan inside training_step (PruningCallback fills it when None)
        self.pruning_strategy = pruning_strategy
        # the token rule's inputs (reference forwards, top-K entropy): qtune.pruning.token_step;
        # a plain attribute, so a reference model is no submodule (not in checkpoints, not trained)
        self.token_step = token_step
        self.val_loss = MeanMetric()
        self.val_acc = MeanMetric()
        self._steps_in_epoch = 0
        self.kernel_warmup_s = 0.0

    # -- statistics ---------------------------------------------------------------------------
    def stats(self, batch: dict, labels: torch.Tensor | None = None):
        if self.task == "classify":
            return classifier_stats(self.model, batch, self.kernel_backend)
        return lm_stats(self.model, batch, labels, self.fused_head, self.kernel_backend, self.response_only_head)

    def response_mask(self, batch: dict) -> torch.Tensor:
        return response_mask(batch, self.task)

    @torch.no_grad()
    def score_batch(self, batch: dict):
        """No-grad statistics of a batch, for scoring passes: (ids, per-sample scores, tokens)."""
        stats = self.stats(batch)
        return batch["sample_id"], sample_scores(stats, stats.valid), self._forward_tokens(batch)

    def _forward_tokens(self, batch: dict) -> torch.Tensor:
        return forward_tokens(batch)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        """:func:`qtune.pruning.train_step.train_step`; the record goes to the pruning callback
        under ``record``."""
        self._steps_in_epoch = batch_idx + 1  # read by the LR schedule after this step
        token_fn = None if self.token_step is None else partial(self.token_step, self.model, self.stats)
        record = train_step(
            self.stats, batch, self.pruning_strategy, self.current_epoch, self.global_step, self.task, token_fn
        )
        # weighted by the micro-batch size: the kept count would cost a host sync every step
        self.log("train/loss", record.loss, prog_bar=True, batch_size=batch["sample_id"].numel())
        return {"loss": record.loss, "record": record}

    def on_train_epoch_start(self) -> None:
        self._steps_in_epoch = 0

    def on_fit_start(self) -> None:
        """Build the statistics kernels before the first epoch (timed apart from training)."""
        from qtune.kernels import warm_up

        vocab = self._num_outputs()
        if vocab is not None:
            precision = str(self.trainer.precision) if self._trainer is not None else "32"
            dtype = (
                torch.bfloat16
                if precision.startswith("bf16")
                else torch.float16
                if precision.startswith("16")
                else torch.float32
            )
            head = self.model.get_output_embeddings() if self.fused_head else None
            self.kernel_warmup_s = warm_up(
                vocab,
                self.device,
                dtype=dtype,
                backend=self.kernel_backend,
                hidden_size=int(head.weight.shape[1]) if head is not None else None,
            )

    def _num_outputs(self) -> int | None:
        """Vocabulary (LM head rows) or number of classes (last linear layer)."""
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if head is not None:
            return int(head.weight.shape[0])
        linears = [m for m in self.model.modules() if isinstance(m, torch.nn.Linear)]
        return int(linears[-1].out_features) if linears else None

    # -- evaluation -------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Token-weighted means; torchmetrics syncs them over ranks at epoch end."""
        stats = self.stats(batch)
        n = stats.valid.sum()
        self.val_loss.update(stats.loss.detach().sum() / n.clamp(min=1), weight=n)
        self.log("eval/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        if self.task == "classify":
            self.val_acc.update(stats.correct.sum() / n.clamp(min=1), weight=n)
            self.log("eval/accuracy", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    # -- checkpoint state ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Frozen weights (a LoRA base) stay out of the checkpoint; they come from the base."""
        from qtune.lightning.trainable_state import drop_frozen

        checkpoint["state_dict"] = drop_frozen(self, checkpoint["state_dict"])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Frozen weights may be absent; a missing trainable weight is still an error."""
        from qtune.lightning.trainable_state import check_loadable, frozen_keys

        if not frozen_keys(self):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        check_loadable(self, state_dict)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = frozen_keys(self)  # absent by design: not reported as missing
        result.missing_keys[:] = [k for k in result.missing_keys if k not in frozen]
        return result

    # -- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=self.betas,
            fused=True,
        )
        cfg = self.scheduler_cfg

        def factor(_step: int) -> float:
            t = self._trainer
            progress = (
                0.0
                if t is None
                else training_progress(
                    t.current_epoch, self._steps_in_epoch, t.num_training_batches, t.max_epochs, find_budget(t)
                )
            )
            return lr_factor(
                progress, cfg.get("name", "cosine"), float(cfg.get("warmup", 0.0)), float(cfg.get("min_ratio", 0.1))
            )

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
