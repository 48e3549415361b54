"""qtune's pruning inside Hugging Face ``Trainer`` (and its subclasses, e.g. TRL's ``SFTTrainer``).

    from qtune.hf import PruningMixin

    class PrunedTrainer(PruningMixin, Trainer):
        pass

    trainer = PrunedTrainer(model=model, args=args, train_dataset=ds, pruning="qtuning",
                            pruning_options={"sample_ratio": 0.25, "token_ratio": 0.5})

What the mixin changes, and why:

* **Sampler**: one per run whose ids are the current epoch's plan (made when the epoch's
  iterator starts, after the previous epoch's scores are merged; a scoring pass first when the
  strategy asks for one). Trainer sizes its loop from the full dataset, so a pruned epoch ends
  early; the plan is padded (ids repeated from its start) to whole optimiser steps, so gradient
  accumulation never straddles two epochs.
* **Loss** (``compute_loss``): token statistics through ``qtune.kernels``, the mean over kept
  response tokens with the plan's per-sample weights (InfoBatch), and batch plans (Q-Tuning)
  through :func:`qtune.pruning.train_step.train_step`, the step ``qtune-train`` runs; a token
  rule (``pruning_token``, composed with any sample strategy) in the same step
  (``qtune.hf.token_rules``), its reference (``pruning_reference``) built with the trainer
  (``qtune.hf.reference``).
  The per-sample scores of the training forward feed the statistics store.
* **LR schedule**: Trainer fixes ``max_steps`` from full epochs; the mixin's schedule reads
  progress instead (epoch + share of this epoch's steps, over ``num_train_epochs``), so warm-up
  and decay span the steps actually run and the LR reaches the schedule's end at the last one.
  ``lr_scheduler_type`` linear, cosine or constant; warm-up from ``warmup_steps``.
* **Compute budget** (``pruning_budget=F``, as ``budget=F`` in ``qtune-train``): the run may
  spend the fraction F of the FLOPs of the matching full run (every sample for
  ``num_train_epochs`` epochs), scoring passes included, and stops at the first optimiser step
  after which one more of the same cost would overrun it; the Trainer's epoch count is lifted so
  a strategy that keeps less runs more epochs, the strategies see the epochs the budget buys,
  and the LR schedule's progress is the share spent. One host read per optimiser step, only
  under a budget. A keyword argument, not a ``TrainingArguments`` field, so that any Trainer
  subclass's own arguments class works unchanged.
* **Packed batches**: TRL's ``packing=True`` is replaced by qtune's packer, which packs only
  each epoch's kept samples (``qtune.hf.packing``); padding-free batches (``padding_free=True``,
  ``DataCollatorWithFlattening``) are read per sample (``qtune.hf.flattened``).
* **sample_id**: added to the dataset when missing, kept through Trainer's column removal and
  through the collator (whatever collator the Trainer uses, e.g. TRL's).
* **Resume**: the pruning state is saved beside each Trainer checkpoint (``qtune_pruning.pt``);
  ``train(resume_from_checkpoint=...)`` restores it and replaces Trainer's assumption of equal
  epochs with the real position (epoch and batches done), so the run continues exactly.

* **Several processes** (``torchrun`` / ``accelerate launch``): every rank plans alike; the
  sampler yields one sequence that accelerate shards batch by batch (``qtune.hf.sampling``);
  rows are gathered over ``torch.distributed`` at each epoch's end; scoring passes are split
  over the ranks; the state is gathered at each checkpoint and written by rank 0.

Not supported: ``IterableDataset`` training sets, ``resume_from_checkpoint`` of a checkpoint
written without the mixin, and accelerate's ``split_batches`` / ``dispatch_batches``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from qtune.models.adapters import parameter_counts
from qtune.pruning.batch_stats import lm_stats
from qtune.pruning.budget import UPPER_EPOCHS, ComputeBudget, build_budget
from qtune.hf.data import (
    KeepSampleId,
    check_batches_have_labels,
    check_map_style,
    check_trainer_setup,
    with_sample_id,
)
from qtune.pruning.core import PruningCore
from qtune.pruning.planned_step import forward_tokens
from qtune.pruning.distributed import Collective, TorchDistributed
from qtune.hf.flattened import per_sample_scores
from qtune.hf import packing as hf_packing
from qtune.hf.callbacks import BookBudgetSteps, BookEpochs
from qtune.hf.sampling import EpochPlanSampler, global_epoch_order, scoring_shares
from qtune.hf.reference import build_token_step, check_reference_argument, run_flops, token_fn_for
from qtune.hf.token_rules import attach_token_rule
from qtune.pruning.train_step import train_step
from qtune.pruning.schedule import lr_factor, training_progress
from qtune.strategies import build_strategy
from qtune.strategies.base import PruningStrategy
from qtune.strategies.token_base import TokenRule

STATE_FILE = "qtune_pruning.pt"
# what the loss reads of a batch: padded, or packed (several samples per row: ``seg`` etc.)
BATCH_KEYS = ("input_ids", "attention_mask", "labels", "sample_id", "position_ids", "seg", "sample_length")
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}


class PruningMixin(hf_packing.PackingHooks):
    """Put before a ``transformers.Trainer`` subclass: ``class T(PruningMixin, Trainer)``.
    ``pruning`` is a strategy name (options in ``pruning_options``) or a built strategy;
    ``pruning_token`` a token rule's name (options in ``pruning_token_options``) or a built
    rule, ``pruning_reference`` what it compares with (``qtune.hf.reference``). The plans,
    scores, history and resumable state are a :class:`qtune.pruning.core.PruningCore`, the one
    ``qtune-train``'s Lightning callback drives."""

    def __init__(
        self,
        *args,
        pruning: str | PruningStrategy | None = "full",
        pruning_options: dict[str, Any] | None = None,
        pruning_budget: float | None = None,
        pruning_token: str | TokenRule | None = None,
        pruning_token_options: dict[str, Any] | None = None,
        pruning_reference: Any = None,
        **kwargs,
    ) -> None:
        check_map_style(kwargs.get("train_dataset"))  # before Trainer's own, generic, message
        self._row_packing = hf_packing.row_packing(
            hf_packing.trainer_args(args, kwargs)
        )  # TRL packing=True: refused or ours
        super().__init__(*args, **kwargs)
        check_trainer_setup(self.args, self.train_dataset)
        if not isinstance(pruning, PruningStrategy):
            pruning = build_strategy(pruning or "full", seed=self.args.seed, **(pruning_options or {}))
        token = attach_token_rule(pruning, pruning_token, pruning_token_options, self.args.seed)
        rule = getattr(pruning, "token_rule", None)
        reference = check_reference_argument(rule, pruning_reference)  # before anything loads
        hf_packing.check_rule_packs(rule, self._row_packing is not None or getattr(self.args, "padding_free", False))
        self.train_dataset = with_sample_id(self.train_dataset)
        if self._row_packing is not None:
            self._row_packing.attach(self.train_dataset, self.data_collator, self.model, self.args)
        self.data_collator = KeepSampleId(self.data_collator)
        check_batches_have_labels(self.data_collator, self.train_dataset, self.args.per_device_train_batch_size)
        self.model_accepts_loss_kwargs = False  # our loss is a token mean: Trainer scales by GA
        self._param_counts = parameter_counts(self.model)  # (all, trainable), for the FLOPs
        self._token_step = build_token_step(rule, reference, self.model, self.train_dataset, self._param_counts[0])
        self.pruning_budget = self._build_budget(pruning, pruning_budget)
        self._pruning_core = PruningCore(
            pruning,
            seed=self.args.seed,
            num_samples=len(self.train_dataset),
            strategy_config=dict(pruning_options or {}) | token,
            keep_past_plans=True,
            budget=self.pruning_budget,
        )
        self._pruning_core.batch_size = self.args.per_device_train_batch_size
        self._pruning_core.reference_identity = self._token_step.identity() if self._token_step else None
        self._pruning_core.packing_layout = None if self._row_packing is None else self._row_packing.layout
        if self.args.world_size > 1:  # torchrun / accelerate launch: gathers over the process group
            self._pruning_core.comm = Collective(TorchDistributed(self.args.device))
        self._epoch = 0
        self._step_flops = 0.0  # this optimiser step's FLOPs so far (a device tensor in a step)
        self.add_callback(BookEpochs(self))
        if self.pruning_budget is not None:
            self.add_callback(BookBudgetSteps(self))

    def _build_budget(self, strategy: PruningStrategy, fraction: float | None) -> ComputeBudget | None:
        if fraction is None:
            return None
        if self.args.max_steps > 0:
            raise ValueError(
                f"pruning_budget={fraction} and max_steps={self.args.max_steps} both "
                "decide when training stops; set one of them"
            )
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"pruning_budget={fraction} is out of range; expected a value in (0.0, 1.0]")
        num_params, trainable = self._param_counts
        batch = self._steps_multiple() * self.args.world_size
        return build_budget(
            float(fraction),
            self._num_epochs(),
            strategy,
            self.train_dataset,
            batch,
            num_params,
            trainable,
            read_items=True,
            prepaid_flops=self._token_step.file_flops if self._token_step is not None else 0.0,
        )

    # the core's state, under the names a Trainer user reads
    pruning_strategy = property(lambda self: self._pruning_core.strategy)
    pruning_plans = property(lambda self: self._pruning_core.plans)
    pruning_history = property(lambda self: self._pruning_core.history)
    pruning_totals = property(lambda self: self._pruning_core.totals)
    pruning_token_rule = property(lambda self: getattr(self._pruning_core.strategy, "token_rule", None))
    _pruning_store = property(lambda self: self._pruning_core.store)
    pruning_flops = property(lambda self: run_flops(self.pruning_totals, *self._param_counts, self._token_step))

    # -- data ------------------------------------------------------------------------------
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if "sample_id" not in self._signature_columns:
            self._signature_columns.append("sample_id")

    def _get_train_sampler(self, train_dataset=None):
        return EpochPlanSampler(lambda: self._epoch_ids(self._epoch), len(self.train_dataset))

    def set_initial_training_values(self, args, dataloader):
        """Trainer sizes its loop from full epochs. Under a budget the budget stops the run, and
        with ``max_steps`` that step count does: the epoch count is lifted (and, under a budget,
        the step bound), so pruned, shorter epochs run until then."""
        values = list(super().set_initial_training_values(args, dataloader))
        if self.pruning_budget is not None:
            values[0] = UPPER_EPOCHS  # num_train_epochs
            values[-1] = UPPER_EPOCHS * values[1]  # max_steps = epochs x update steps per epoch
        elif args.max_steps > 0:
            values[0] = UPPER_EPOCHS
        return tuple(values)

    def _steps_multiple(self) -> int:
        """Samples of one optimiser step on one rank."""
        return self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps

    def _epoch_ids(self, epoch: int) -> torch.Tensor | list[tuple[int, ...]]:
        """This epoch's shuffled plan, padded to whole optimiser steps on every rank: the one
        sequence accelerate deals out to the ranks batch by batch (``qtune.hf.sampling``);
        under packing, its rows (tuples of sample ids)."""
        plan = self.plan_epoch(epoch)
        if self._row_packing is not None:
            steps = self._steps_multiple()
            return self._row_packing.epoch_rows(epoch, plan, self.args.seed, steps, self.args.world_size)
        return global_epoch_order(
            plan.sample_ids,
            seed=self.args.seed,
            epoch=epoch,
            step_samples=self._steps_multiple(),
            world_size=self.args.world_size,
        )

    def _rank_batches(self, planned: int) -> int:
        """Micro-batches each rank runs in an epoch whose plan has `planned` ids."""
        per_round = self._steps_multiple() * self.args.world_size
        return -(-planned // per_round) * self.args.gradient_accumulation_steps

    # -- plans -----------------------------------------------------------------------------
    def _num_epochs(self) -> int:
        return max(1, int(-(-float(self.args.num_train_epochs) // 1)))

    def plan_epoch(self, epoch: int):
        """The epoch's plan (made once; a scoring pass first when the strategy asks); its
        weights are in force from here."""
        core = self._pruning_core
        plan = core.plan_epoch(epoch, self._num_epochs(), self._scoring_pass)
        if self._epoch != epoch or not core.epoch_clock.running:
            core.epoch_clock.start()
        self._epoch = epoch
        return plan

    def _scoring_pass(self, epoch: int) -> None:
        """A no-grad pass over every sample, each rank scoring its share (gathered by the core)."""
        model = self.model
        was_training = model.training
        model.eval()
        data, collate = self.train_dataset, self.data_collator
        shares = scoring_shares(
            len(data), self.args.process_index, self.args.world_size, self.args.per_device_train_batch_size
        )

        def score_batch(share):
            ids, real = share
            batch = self._prepare_inputs(collate([data[i] for i in ids]))
            stats = lm_stats(model, batch)
            scores = {k: v[:real] for k, v in per_sample_scores(stats, batch).items()}
            return batch["sample_id"][:real], scores, forward_tokens(batch)

        self._pruning_core.run_scoring_pass(epoch, shares, score_batch)
        model.train(was_training)

    # -- loss ------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training or "sample_id" not in inputs:  # evaluation: the model's own loss
            inputs = {k: v for k, v in inputs.items() if k != "sample_id"}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        batch = {k: inputs[k] for k in BATCH_KEYS if k in inputs}
        weights = self._pruning_core.sample_weights(batch["sample_id"])
        if weights is not None:  # the plan's weights reach the loss on the batch, as in qtune-train
            batch["sample_weight"] = weights

        def stats_fn(b, labels=None):
            return lm_stats(model, b, labels)

        token_fn = token_fn_for(self._token_step, model, stats_fn, self.accelerator.unwrap_model)
        step = self.state.global_step
        record = train_step(stats_fn, batch, self.pruning_strategy, self._epoch, step, token_fn=token_fn)
        loss = record.loss
        # rows and counters stay on the device (no host sync per step) until the epoch ends
        self._pruning_core.record_batch(record)
        if self.pruning_budget is not None:  # read once per optimiser step (BookBudgetSteps)
            self._step_flops = self._step_flops + self.pruning_budget.step_cost(record, loss.device)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _finish_epoch(self) -> None:
        """Merge the epoch's scores into the store and book what it trained."""
        core = self._pruning_core
        core.finish_epoch(self._epoch)
        if self.pruning_budget is not None:
            self.pruning_budget.end_epoch()
        self._epoch += 1

    # -- LR schedule -----------------------------------------------------------------------
    def training_progress(self) -> float:
        """(epoch + batches done / batches of this epoch's plan) / epochs; with ``max_steps``
        the share of its micro-batches done (so the schedule ends at the last step run)."""
        if self.args.max_steps > 0 and self.pruning_budget is None:
            done = sum(h["batches"] for h in self.pruning_history) + self._pruning_core.batches_done
            return min(done / (self.args.max_steps * self.args.gradient_accumulation_steps), 1.0)
        plan = self.pruning_plans.get(self._epoch)
        if plan is None:
            return self._epoch / self._num_epochs()
        planned = plan.sample_ids.numel() if self._row_packing is None else len(self._epoch_ids(self._epoch))
        batches = self._rank_batches(planned)
        return training_progress(
            self._epoch, self._pruning_core.batches_done, batches, self._num_epochs(), self.pruning_budget
        )

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            kind = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
            if kind not in SCHEDULES:
                raise ValueError(f"PruningMixin supports lr_scheduler_type {sorted(SCHEDULES)}; got {kind!r}")
            warmup = float(self.args.warmup_steps or 0)
            warmup = warmup if warmup < 1 else warmup / max(num_training_steps, 1)
            name = SCHEDULES[kind]
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, lambda _: lr_factor(self.training_progress(), name, warmup, 0.0)
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # -- checkpoints -----------------------------------------------------------------------
    def pruning_state_dict(self) -> dict[str, Any]:
        budget = self.pruning_budget
        return {
            "core": self._pruning_core.state_dict(self._epoch),
            "epoch": self._epoch,
            "budget": None if budget is None else budget.state_dict(),
            "gradient_accumulation_steps": self.args.gradient_accumulation_steps,
            "world_size": self.args.world_size,
        }

    def load_pruning_state_dict(self, state: dict[str, Any]) -> None:
        """Refused, naming the difference, when the strategy or its options differ."""
        saved, budget = state.get("budget"), self.pruning_budget
        if (saved is None) != (budget is None):
            raise ValueError(
                f"this checkpoint was written with pruning_budget="
                f"{None if saved is None else saved['fraction']}; this trainer has "
                f"pruning_budget={None if budget is None else budget.fraction}: "
                "resume with the same budget, or start a new run"
            )
        self._pruning_core.load_state_dict(state["core"])
        if budget is not None:
            budget.load_state_dict(saved)
        self._epoch = int(state["epoch"])
        accumulation = state.get("gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        if self._pruning_core.resuming(self._epoch) and accumulation != self.args.gradient_accumulation_steps:
            raise ValueError(
                f"this checkpoint was taken mid-epoch with gradient_accumulation_steps={accumulation}; this "
                f"trainer has {self.args.gradient_accumulation_steps}, which pads the epoch to other whole "
                "steps and would retrain or skip samples. Resume with the same accumulation, or from an "
                "end-of-epoch checkpoint"
            )

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        state = self.pruning_state_dict()  # on every rank: it gathers each rank's progress
        if self.args.should_save:
            from qtune.runs.atomic import replaced_file

            with replaced_file(os.path.join(folder, STATE_FILE)) as tmp:
                torch.save(state, tmp)

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ):
        """Trainer assumes equal epochs; the saved pruning state knows the real position."""
        epochs, steps = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is None:
            return epochs, steps
        path = os.path.join(resume_from_checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{resume_from_checkpoint}: no {STATE_FILE}; this checkpoint was not written by a PruningMixin trainer"
            )
        from qtune.runs.checkpoint_file import load_state_file

        state = load_state_file(path, "resume_from_checkpoint", what=f"pruning state ({STATE_FILE})")
        self.load_pruning_state_dict(state)
        core, epoch = self._pruning_core, self._epoch
        done = core.batches_done
        hf_packing.check_resume_layout(core, epoch, self._row_packing)
        core.samples_to_skip(
            epoch, self.args.per_device_train_batch_size, key="per_device_train_batch_size"
        )  # refuses another batch size
        self.plan_epoch(epoch)
        core.epoch_clock.start(core.resumed_epoch_seconds)
        if done >= self._rank_batches(len(self._epoch_ids(epoch))):
            self._finish_epoch()  # saved at an epoch's last step, before the epoch was booked
            return self._epoch, 0
        return epoch, done
