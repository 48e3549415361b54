"""PruningCallback: asks the strategy for plans, feeds it scores, and counts what training cost.

Protocol for a LightningModule (qtune's own modules follow it; so can a user's):

1. Dataset items are dicts with ``sample_id`` (wrap a plain dataset in
   :class:`qtune.engine.indexed.IndexedDataset`).
2. ``train_dataloader()`` returns ``callback.dataloader(dataset, batch_size=..., ...)``; the
   Trainer runs with ``reload_dataloaders_every_n_epochs=1`` and ``use_distributed_sampler=False``.
3. ``training_step`` returns a dict with ``loss`` and, to feed the score store, ``sample_ids``
   and ``scores`` (a dict of per-sample tensors named as in ``ScoreStore`` FIELDS, plus
   ``num_tokens``); optionally ``tokens_trained``, ``forward_tokens``, ``samples_trained``,
   ``scoring_tokens`` counters. ``callback.sample_weights(ids)`` gives the plan's loss weights.
4. Strategies that need a scoring pass call ``pl_module.score_batch(batch)`` (no grad), which
   returns ``(sample_ids, scores, forward_tokens)``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from qtune.engine.item_tracking import ItemTracker
from qtune.engine.distributed import digest, gather_rows, ranks_agree, sum_over_ranks
from qtune.engine.resume_state import ResumeState
from qtune.engine.sampler import PlanSampler, shard_plan
from qtune.engine.score_store import ScoreStore
from qtune.strategies.base import EpochContext, EpochPlan, PruningStrategy, epoch_generator

COUNTERS = ("samples_trained", "tokens_trained", "forward_tokens", "scoring_tokens",
            "wrong_tokens_trained")


def plan_hash(ids: torch.Tensor) -> str:
    return hashlib.sha1(ids.sort().values.numpy().tobytes()).hexdigest()[:12]


class PruningCallback(ResumeState, Callback):
    """`strategy_config` (the strategy's settings, e.g. its Hydra node) is stored in
    checkpoints, and resuming with other settings or another seed is refused."""

    def __init__(self, strategy: PruningStrategy, seed: int = 0, num_samples: int | None = None,
                 item_meta: list[dict] | None = None, export_dir=None,
                 strategy_config: dict | None = None) -> None:
        self.strategy = strategy
        self.strategy_config = strategy_config
        self.export_dir = export_dir
        self.seed = int(seed)
        self.items = ItemTracker.maybe(item_meta)
        self.store: ScoreStore | None = ScoreStore(num_samples) if num_samples else None
        self.plans: dict[int, EpochPlan] = {}
        self.history: list[dict[str, Any]] = []
        self.totals = {k: 0.0 for k in COUNTERS} | {"train_time_s": 0.0, "scoring_time_s": 0.0}
        self._trainer = None
        self._module = None
        self._weights: torch.Tensor | None = None
        self._rows: list[dict[str, torch.Tensor]] = []
        self._counters: dict[str, torch.Tensor] = {}
        self._batch_info: dict[str, float] = {}
        self._epoch_t0 = 0.0
        self._val_time = 0.0
        self._batches_done = 0  # batches of the current epoch already trained
        self._token_rows: list[dict[str, torch.Tensor]] = []  # token masks, with export_dir
        self._nonfinite: torch.Tensor | None = None  # any non-finite loss since the last check
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) of a mid-epoch resume
        self._resume_batch_size: int | None = None
        self._resume_elapsed = 0.0  # seconds of the resumed epoch trained before the checkpoint
        self._batch_size: int | None = None

    @property
    def state_key(self) -> str:
        # one key whatever the strategy, so resuming with another strategy is caught, not ignored
        return "PruningCallback"

    # -- Lightning hooks --------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError("PruningCallback needs Trainer(reload_dataloaders_every_n_epochs=1): "
                             "each epoch's loader is built from that epoch's plan")
        if getattr(trainer, "_accelerator_connector").use_distributed_sampler:
            raise ValueError("PruningCallback needs Trainer(use_distributed_sampler=False): "
                             "the plan sampler shards the plan over ranks itself")
        self._trainer, self._module = trainer, pl_module
        pl_module.pruning = self
        if self.items is not None:
            self.items.to(pl_module.device)

    def on_train_start(self, trainer, pl_module) -> None:
        self.settle_resume(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._val_time = 0.0
        if self._resume_at is not None and self._resume_at[0] == trainer.current_epoch:
            self.settle_resume(trainer)  # resumed mid-epoch: keep this epoch's restored rows
            return
        self._epoch_t0 = time.perf_counter()
        self._rows, self._counters, self._batch_info = [], {}, {}
        self._token_rows = []
        self._batches_done = 0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and getattr(self, "_val_t0", None) is not None:
            self._val_time += time.perf_counter() - self._val_t0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches_done = batch_idx + 1
        if not isinstance(outputs, dict):
            return
        if "loss" in outputs:  # stays on the device: checked once per epoch and per checkpoint
            bad = ~torch.isfinite(outputs["loss"].detach())
            self._nonfinite = bad if self._nonfinite is None else (self._nonfinite | bad)
        if "sample_ids" in outputs and "scores" in outputs:
            row = {"sample_ids": outputs["sample_ids"].detach()}
            row.update({k: v.detach() for k, v in outputs["scores"].items()})
            self._rows.append(row)
        if self.items is not None and "sample_ids" in outputs:
            for key, val in self.items.step_counts(outputs["sample_ids"], outputs.get("trained_mask")).items():
                self._counters[key] = self._counters.get(key, 0) + val
        if self.export_dir is not None and "token_keep" in outputs:
            self._token_rows.append({k: outputs[k].detach().cpu() for k in
                                     ("sample_ids", "token_keep", "response_mask")})
        for key in COUNTERS:
            if key in outputs:
                val = torch.as_tensor(outputs[key]).detach()
                self._counters[key] = self._counters.get(key, 0) + val
        if "samples_trained" not in outputs and "sample_ids" in outputs:
            n = torch.tensor(float(outputs["sample_ids"].numel()))
            self._counters["samples_trained"] = self._counters.get("samples_trained", 0) + n

    def record_batch_info(self, info: dict[str, float]) -> None:
        """Per-batch numbers of a batch plan, summed per epoch (tensors stay on the device)."""
        for k, v in info.items():
            v = v.detach() if torch.is_tensor(v) else float(v)
            self._batch_info[k] = self._batch_info.get(k, 0.0) + v

    def _epoch_batch_info(self) -> dict[str, float]:
        """This epoch's summed batch-plan numbers on the host; ``alpha`` becomes a mean."""
        info = {k: float(v) for k, v in self._batch_info.items()}
        if "alpha" in info and info.get("batches"):
            info["alpha"] /= info["batches"]
        return info

    def check_finite(self, epoch: int) -> None:
        """Fail loudly, naming the samples, if any loss since the last check was NaN or inf."""
        if self._nonfinite is None or not bool(self._nonfinite):
            return
        ids = []
        for r in self._rows:
            if "loss" in r:
                bad = ~torch.isfinite(r["loss"].cpu()) & (r["num_tokens"].cpu() > 0 if "num_tokens" in r else True)
                ids += r["sample_ids"].cpu()[bad].tolist()
        raise FloatingPointError(
            f"non-finite training loss in epoch {epoch}; samples with a non-finite loss: "
            f"{sorted(set(ids))[:50] or 'unknown (no per-sample scores recorded)'}. "
            "No checkpoint or summary is written for this state.")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check_finite(trainer.current_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        elapsed = time.perf_counter() - self._epoch_t0 - self._val_time
        self.finish_epoch(trainer, trainer.current_epoch, elapsed)

    def finish_epoch(self, trainer, epoch: int, elapsed: float) -> None:
        """Merge the epoch's scores (all ranks), book its counters and history entry."""
        self.check_finite(epoch)
        if self._rows and self.store is not None:
            rows = {k: torch.cat([r[k].flatten().cpu() for r in self._rows]) for k in self._rows[0]}
            rows = gather_rows(trainer, rows)
            ids = rows.pop("sample_ids")
            self.store.merge_updates(ids, epoch, **rows)
        counts = sum_over_ranks(trainer, {k: torch.as_tensor(v) for k, v in self._counters.items()})
        for k, v in counts.items():
            self.totals[k] = self.totals.get(k, 0.0) + v
        self.totals["train_time_s"] += elapsed
        plan = self.plans.get(epoch)
        n = self.store.num_samples if self.store is not None else 0
        entry = {"epoch": epoch, "planned_samples": int(plan.sample_ids.numel()) if plan else 0,
                 "samples_trained": counts.get("samples_trained", 0.0),
                 "tokens_trained": counts.get("tokens_trained", 0.0),
                 "plan_hash": plan_hash(plan.sample_ids) if plan else "",
                 "time_s": elapsed, **(plan.info if plan else {}), **self._epoch_batch_info()}
        entry["planned_keep_ratio"] = entry["planned_samples"] / max(n, 1)
        entry["realised_keep_ratio"] = entry["samples_trained"] / max(n, 1)
        if self.items is not None:
            entry.update(self.items.shares(counts))
        self._check_ranks_agree(trainer, epoch, plan)
        entry["world_size"] = trainer.world_size
        self.history.append(entry)
        if self.export_dir is not None and plan is not None and trainer.is_global_zero:
            self._export(epoch, plan)
        # this epoch's plan stays: Lightning restores an end-of-epoch checkpoint at the epoch
        # it ended and builds (not runs) a loader for it before moving on, and re-planning it
        # would cost a scoring pass and change the score store
        self.plans = {e: p for e, p in self.plans.items() if e >= epoch}
        self._rows, self._counters, self._batch_info = [], {}, {}
        self._batches_done, self._resume_at, self._resume_elapsed = 0, None, 0.0
        loggable = {f"prune/{k}": float(v) for k, v in entry.items()
                    if isinstance(v, (int, float)) and k != "epoch"}
        for logger in trainer.loggers if loggable else []:
            logger.log_metrics(loggable, step=trainer.global_step)
            logger.save()  # written now: a crash before the next flush must not lose it

    def _check_ranks_agree(self, trainer, epoch: int, plan: EpochPlan | None) -> None:
        """Every rank must hold the same plan and, after the merge, the same score store."""
        if trainer.world_size == 1:
            return
        if plan is not None and not ranks_agree(trainer, digest(plan.sample_ids.sort().values)):
            raise RuntimeError(f"ranks computed different plans for epoch {epoch}: the strategy "
                               f"{self.strategy.name!r} depends on rank-local state")
        if self.store is not None:
            state = self.store.state_dict()
            fp = digest(*(v for k, v in sorted(state.items()) if k != "num_samples"))
            if not ranks_agree(trainer, fp):
                raise RuntimeError(f"ranks hold different score stores after epoch {epoch}")

    def _export(self, epoch: int, plan: EpochPlan) -> None:
        """Write the epoch's kept ids (and weights) as plain JSON, atomically."""
        from qtune.summary import atomic_write_json

        atomic_write_json(f"{self.export_dir}/epoch_{epoch:03d}.json", {
            "epoch": epoch, "strategy": self.strategy.name, "sample_ids": plan.sample_ids.tolist(),
            "weights": None if plan.weights is None else plan.weights.tolist(),
            "plan_hash": plan_hash(plan.sample_ids)})
        if self._token_rows:  # this rank's share of the batch plans' token masks
            rows = []
            for r in self._token_rows:
                for sid, keep, resp in zip(r["sample_ids"].tolist(), r["token_keep"], r["response_mask"]):
                    rows.append({"sample_id": sid, "response": resp.nonzero().flatten().tolist(),
                                 "kept": keep.nonzero().flatten().tolist()})
            atomic_write_json(f"{self.export_dir}/tokens_epoch_{epoch:03d}.json",
                              {"epoch": epoch, "coordinates": "label positions (label j predicts "
                               "input token j + 1)", "rows": rows})
            self._token_rows = []

    # -- plans ---------------------------------------------------------------------------------
    def dataloader(self, dataset, batch_size: int, collate_fn=None, num_workers: int = 0,
                   **kwargs) -> DataLoader:
        """The train loader of the current epoch: only the planned ids, sharded for this rank."""
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("PruningCallback is not attached: pass it in Trainer(callbacks=[...])")
        if self.store is None:
            self.store = ScoreStore(len(dataset))
        elif self.store.num_samples != len(dataset):
            raise ValueError(f"the training set has {len(dataset)} samples but the pruning state "
                             f"was built for {self.store.num_samples}")
        self._dataset, self._collate = dataset, collate_fn
        self._batch_size, self._num_workers = batch_size, num_workers
        epoch = trainer.current_epoch
        self.settle_resume(trainer)  # an epoch the checkpoint holds complete is booked first
        plan = self.plan_for_epoch(epoch)
        skip = 0
        if self._resume_at is not None and self._resume_at[0] == epoch:
            if self._resume_batch_size not in (None, batch_size):
                raise ValueError(
                    f"this checkpoint was taken mid-epoch with batch size "
                    f"{self._resume_batch_size}; this run uses {batch_size} (config key "
                    "batch_size), which would retrain or skip samples. Resume with the same "
                    "batch size, or from an end-of-epoch checkpoint")
            skip = self._resume_at[1] * batch_size
        sampler = PlanSampler(plan.sample_ids, seed=self.seed, epoch=epoch, skip=skip,
                              rank=trainer.global_rank, world_size=trainer.world_size)
        if plan.weights is not None:
            w = torch.ones(self.store.num_samples)
            w[plan.sample_ids] = plan.weights
            self._weights = w.to(self._module.device)
        else:
            self._weights = None
        # a private generator: creating the loader's iterator must not consume the global RNG
        kwargs.setdefault("generator", epoch_generator(self.seed, epoch, salt=29))
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                          num_workers=num_workers, drop_last=False, **kwargs)

    def plan_for_epoch(self, epoch: int) -> EpochPlan:
        if epoch in self.plans:
            return self.plans[epoch]
        from qtune.engine.budget import find_budget

        budget = find_budget(self._trainer)  # under a budget: the epochs it buys, re-estimated
        max_epochs = budget.planned_epochs(epoch) if budget else int(self._trainer.max_epochs or 1)
        ctx = EpochContext(epoch=epoch, max_epochs=max_epochs,
                           num_samples=self.store.num_samples, seed=self.seed, scores=self.store)
        if self.strategy.needs_scoring_pass(ctx):
            self.scoring_pass(epoch)
        plan = self.strategy.epoch_plan(ctx)
        if plan.sample_ids.numel() == 0:
            raise ValueError(f"strategy {self.strategy.name!r} returned an empty plan for epoch "
                             f"{epoch}; check its ratios")
        if int(plan.sample_ids.min()) < 0 or int(plan.sample_ids.max()) >= self.store.num_samples:
            raise ValueError(f"strategy {self.strategy.name!r} planned ids outside [0, "
                             f"{self.store.num_samples}) for epoch {epoch}")
        self.plans[epoch] = plan
        return plan

    def wrong_tokens(self, sample_ids: torch.Tensor, length: int) -> torch.Tensor | None:
        """Wrong-answer token flags [B, length] (label coordinates) when the data marks them."""
        return None if self.items is None else self.items.wrong_tokens(sample_ids, length)

    def run_shares(self, epochs: int) -> dict[str, float]:
        """Whole-run share of each item kind (and of wrong-answer tokens) that was trained."""
        return {} if self.items is None else self.items.shares(self.totals, epochs)

    def sample_weights(self, sample_ids: torch.Tensor) -> torch.Tensor | None:
        return None if self._weights is None else self._weights[sample_ids]

    @torch.no_grad()
    def scoring_pass(self, epoch: int) -> None:
        """Score every training sample without gradients, sharded over ranks, then gather."""
        module, trainer = self._module, self._trainer
        if not hasattr(module, "score_batch"):
            raise TypeError(f"strategy {self.strategy.name!r} needs a scoring pass: the "
                            "LightningModule must implement score_batch(batch)")
        t0 = time.perf_counter()
        ids = shard_plan(torch.arange(self.store.num_samples), seed=self.seed, epoch=epoch,
                         rank=trainer.global_rank, world_size=trainer.world_size, shuffle=False)
        loader = DataLoader(self._dataset, batch_size=self._batch_size, sampler=ids.tolist(),
                            collate_fn=self._collate, num_workers=0)
        was_training = module.training
        module.eval()
        rows, tokens = [], torch.zeros((), dtype=torch.float64)
        for batch in loader:
            batch = trainer.strategy.batch_to_device(batch)
            sample_ids, scores, fwd_tokens = module.score_batch(batch)
            rows.append({"sample_ids": sample_ids, **scores})
            tokens += torch.as_tensor(fwd_tokens).double().cpu()
        module.train(was_training)
        merged = {k: torch.cat([r[k].flatten() for r in rows]) for k in rows[0]}
        merged = gather_rows(trainer, merged)
        self.store.update(merged.pop("sample_ids"), epoch, track_dynamics=False, **merged)
        pass_tokens = sum_over_ranks(trainer, {"t": tokens})["t"]
        self.totals["scoring_tokens"] += pass_tokens
        # kept apart too: a compute budget counts batch scoring per step, passes here
        self.totals["scoring_pass_tokens"] = self.totals.get("scoring_pass_tokens", 0.0) + pass_tokens
        elapsed = time.perf_counter() - t0
        self.totals["scoring_time_s"] += elapsed
        self.totals["train_time_s"] += elapsed
