"""PruningCore: the trainer-independent part of pruning (no Lightning, no transformers here).

It holds the strategy, the statistics store, the epochs' plans, the history, the compute totals and
the resumable state, behind a small protocol each trainer integration drives:

1. ``plan_epoch(epoch, max_epochs, score_all)``: the epoch's plan (``score_all(epoch)`` runs a
   scoring pass first when the strategy asks for one and books it with ``book_scoring_pass``).
2. ``batch_extras(batch)``: what the plan adds to a collated batch (``sample_weight`` [B] and
   ``wrong_tokens`` [B, L]), so a training step reads them from the batch.
3. ``record_batch(record)`` after each step (a :class:`qtune.pruning.train_step.StepRecord`):
   per-sample scores, counters, batch-plan info.
4. ``finish_epoch(epoch)``: merge the epoch's statistics (dense buffers by sample id,
   :mod:`qtune.pruning.epoch_buffers`) from every rank into the statistics store, book
   counters and one history entry, timed by ``epoch_clock`` (the integration starts it when the
   epoch's training starts and pauses it around validation).
5. ``state_dict(epoch)`` / ``load_state_dict(state)`` (from :class:`ResumeState`).

Cross-rank gathers go through ``self.comm`` (:class:`qtune.pruning.distributed.Collective`),
which the integration sets; the default is one process.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable

import torch

from qtune.pruning.batch_extras import BatchExtras
from qtune.pruning.budget import ComputeBudget
from qtune.pruning.distributed import Collective, digest
from qtune.pruning import epoch_clock
from qtune.pruning.epoch_buffers import EpochBuffers
from qtune.pruning.epoch_clock import EpochClock
from qtune.pruning.item_tracking import ItemTracker
from qtune.pruning.resume_state import ResumeState
from qtune.pruning.rng import pack_state, unpack_state
from qtune.pruning.statistics_store import StatisticsStore
from qtune.pruning.train_step import StepRecord
from qtune.strategies.base import EpochContext, EpochPlan, PruningStrategy

COUNTERS = (
    "samples_trained",
    "tokens_trained",
    "response_tokens",  # of the trained rows: the token keep ratio's denominator
    "forward_tokens",
    "scoring_tokens",
    "wrong_tokens_trained",
)


def plan_hash(ids: torch.Tensor) -> str:
    """sha1 of the plan's ids in ascending order (12 hex digits): equal for equal sets.

    Strategies return ascending ids, so a linear check replaces the sort, and the hash reads
    the tensor's buffer without a copy; the value is that of ``sha1(ids.sort().values)``.
    """
    if ids.dim() != 1:
        return hashlib.sha1(ids.sort().values.numpy().tobytes()).hexdigest()[:12]
    if ids.numel() > 1 and not bool((ids[1:] >= ids[:-1]).all()):
        ids = ids.sort().values
    return hashlib.sha1(ids.contiguous().numpy()).hexdigest()[:12]


class PruningCore(ResumeState):
    """`strategy_config` (the strategy's settings, e.g. its Hydra node) is stored in
    checkpoints, and resuming with other settings or another seed is refused. Plans of
    finished epochs are dropped unless `keep_past_plans` (then kept in memory, never in
    checkpoints: those hold only the plans a resume needs)."""

    def __init__(
        self,
        strategy: PruningStrategy,
        seed: int = 0,
        num_samples: int | None = None,
        item_meta: list[dict] | None = None,
        export_dir=None,
        strategy_config: dict | None = None,
        keep_past_plans: bool = False,
        budget: ComputeBudget | None = None,
        data_fingerprint: dict | None = None,
    ) -> None:
        self.strategy = strategy
        self.data_fingerprint = data_fingerprint  # qtune.data.fingerprint: checked on resume
        self.budget = budget  # budget=F: plans see the epochs it buys; scoring passes spend it
        self.keep_past_plans = keep_past_plans  # else finished epochs' plans are dropped
        self.strategy_config = strategy_config
        self.export_dir = export_dir
        self.seed = int(seed)
        self.items = ItemTracker.maybe(item_meta)
        self.store: StatisticsStore | None = StatisticsStore(num_samples) if num_samples else None
        self.plans: dict[int, EpochPlan] = {}
        self.history: list[dict[str, Any]] = []
        self.totals = {k: 0.0 for k in COUNTERS} | {"train_time_s": 0.0, "scoring_time_s": 0.0}
        self.comm = Collective()
        self.weights: torch.Tensor | None = None  # dense loss weights of the plan in force
        self._pass_tokens = 0.0  # scoring-pass tokens not yet in a history entry
        self._buffers = EpochBuffers()  # the epoch's per-sample scores, by sample id on the steps' device
        self.begin_epoch()
        self.epoch_clock = EpochClock()
        self._nonfinite: torch.Tensor | None = None  # any non-finite loss since the last check
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) of a mid-epoch resume
        self._resume_batch_size: int | None = None
        self._resume_elapsed = 0.0  # seconds of the resumed epoch trained before the checkpoint
        self.batch_size: int | None = None  # the integration's per-rank batch size (resume checks it)
        self.packing_layout: dict | None = None  # the loader's packing (resume checks it), None: padded
        self.reference_identity: dict | None = None  # a token rule's reference (resume checks it)
        self._resume_packing: dict | None = None

    def begin_epoch(self) -> None:
        self._buffers.reset()
        self._counters: dict[str, torch.Tensor] = {}
        self._batch_info: dict[str, float] = {}
        self._token_rows: list[dict[str, torch.Tensor]] = []  # token masks, with export_dir
        self._batches_done = 0  # batches of the current epoch already trained

    def resuming(self, epoch: int) -> bool:
        """True while `epoch` is the one a mid-epoch checkpoint was taken in."""
        return self._resume_at is not None and self._resume_at[0] == epoch

    def run_scoring_pass(self, epoch: int, batches: Iterable, score_batch: Callable[[Any], tuple]) -> None:
        """A no-grad pass: ``score_batch(batch)`` gives ``(sample_ids, scores, forward_tokens)``
        for each of this rank's batches; the scores of all ranks are stored and the pass booked."""
        t0 = epoch_clock.now()
        rows, tokens = [], torch.zeros((), dtype=torch.float64)
        with torch.no_grad():
            for batch in batches:
                sample_ids, scores, fwd_tokens = score_batch(batch)
                rows.append({"sample_ids": sample_ids, **scores})
                tokens += torch.as_tensor(fwd_tokens).double().cpu()
        self.book_scoring_pass(epoch, rows, tokens, epoch_clock.now() - t0)

    @property
    def batches_done(self) -> int:
        """Batches of the current epoch trained so far (restored by a mid-epoch resume)."""
        return self._batches_done

    # -- plans ---------------------------------------------------------------------------------
    def ensure_store(self, num_samples: int) -> StatisticsStore:
        if self.store is None:
            self.store = StatisticsStore(num_samples)
        elif self.store.num_samples != num_samples:
            raise ValueError(
                f"the training set has {num_samples} samples but the pruning state "
                f"was built for {self.store.num_samples}"
            )
        return self.store

    def plan_epoch(self, epoch: int, max_epochs: int, score_all: Callable[[int], None] | None = None) -> EpochPlan:
        """The epoch's plan, made once; it also sets the dense loss weights in force. Under a
        compute budget `max_epochs` is the budget's estimate of the epochs it buys."""
        if self.budget is not None:
            max_epochs = self.budget.planned_epochs(epoch)
        if epoch not in self.plans:
            ctx = EpochContext(
                epoch=epoch,
                max_epochs=max_epochs,
                num_samples=self.store.num_samples,
                seed=self.seed,
                scores=self.store,
            )
            if self.strategy.needs_scoring_pass(ctx):
                if score_all is None:
                    raise TypeError(
                        f"strategy {self.strategy.name!r} needs a scoring pass and this trainer gave no way to run one"
                    )
                score_all(epoch)
            plan = self.strategy.epoch_plan(ctx)
            if plan.sample_ids.numel() == 0:
                raise ValueError(
                    f"strategy {self.strategy.name!r} returned an empty plan for epoch {epoch}; check its ratios"
                )
            n = self.store.num_samples
            if int(plan.sample_ids.min()) < 0 or int(plan.sample_ids.max()) >= n:
                raise ValueError(f"strategy {self.strategy.name!r} planned ids outside [0, {n}) for epoch {epoch}")
            self.plans[epoch] = plan
        plan = self.plans[epoch]
        self.weights = None
        if plan.weights is not None:
            self.weights = torch.ones(self.store.num_samples)
            self.weights[plan.sample_ids] = plan.weights.float()
        return plan

    def batch_extras(self, inner_collate: Callable | None = None) -> BatchExtras:
        """A collate function (around ``inner_collate``) that adds the plan's extras."""
        wrong = None if self.items is None else self.items.wrong_by_id
        return BatchExtras(inner_collate, self.weights, wrong)

    def sample_weights(self, sample_ids: torch.Tensor) -> torch.Tensor | None:
        return None if self.weights is None else self.weights.to(sample_ids.device)[sample_ids]

    def wrong_tokens(self, sample_ids: torch.Tensor, length: int) -> torch.Tensor | None:
        """Wrong-answer token flags [B, length] (label coordinates) when the data marks them."""
        return None if self.items is None else self.items.wrong_tokens(sample_ids, length)

    def run_shares(self, epochs: int) -> dict[str, float]:
        """Whole-run share of each item kind (and of wrong-answer tokens) that was trained."""
        return {} if self.items is None else self.items.shares(self.totals, epochs)

    # -- per batch -----------------------------------------------------------------------------
    def record_batch(self, record: StepRecord | dict | None, batch_idx: int | None = None) -> None:
        """Book one training step (a :class:`StepRecord`, or a user module's outputs dict, read
        by ``StepRecord.from_outputs``); its scores are written on the device, no host sync."""
        self._batches_done = self._batches_done + 1 if batch_idx is None else batch_idx + 1
        record = StepRecord.from_outputs(record) if not isinstance(record, StepRecord) else record
        if record is None:
            return
        # checked once per epoch and per checkpoint
        bad = ~torch.isfinite(record.loss.detach())
        self._nonfinite = bad if self._nonfinite is None else (self._nonfinite | bad)
        ids = record.sample_ids.detach()
        if record.scores and self.store is not None:
            self._buffers.record(ids, record.scores, self.store.num_samples)
        if self.items is not None:
            for key, val in self.items.step_counts(ids, record.trained_mask).items():
                self._add(key, val)
        if self.export_dir is not None and record.token_keep is not None:
            self._token_rows.append(
                {
                    "sample_ids": ids.cpu(),
                    "token_keep": record.token_keep.detach().cpu(),
                    "response_mask": record.response_mask.detach().cpu(),
                }
            )
        for key in COUNTERS:
            value = getattr(record, key)
            if value is not None:
                self._add(key, torch.as_tensor(value).detach())
        if record.batch_info:
            self.record_batch_info(record.batch_info)

    def _add(self, key: str, value) -> None:
        self._counters[key] = self._counters.get(key, 0) + value

    def record_batch_info(self, info: dict[str, float]) -> None:
        """Per-batch numbers of a batch plan, summed per epoch (tensors stay on the device)."""
        for k, v in info.items():
            v = v.detach() if torch.is_tensor(v) else float(v)
            self._batch_info[k] = self._batch_info.get(k, 0.0) + v

    def _epoch_batch_info(self) -> dict[str, float]:
        """This epoch's batch-plan numbers summed over every rank's batches (a rank may lack a
        key another has, so the dicts are gathered whole); ``alpha`` becomes a mean over the
        planned batches, whose count leaves the entry (its ``batches`` is per rank)."""
        mine = {k: float(v) for k, v in self._batch_info.items()}
        ranks = [mine] if self.comm.world_size == 1 else [unpack_state(t) for t in self.comm.per_rank(pack_state(mine))]
        info: dict[str, float] = {}
        for rank_info in ranks:
            for k, v in rank_info.items():
                info[k] = info.get(k, 0.0) + v
        planned = info.pop("batches", 0.0)
        if "alpha" in info and planned:
            info["alpha"] /= planned
        return info

    def check_finite(self, epoch: int) -> None:
        """Fail loudly, naming the samples, if any loss since the last check was NaN or inf."""
        if self._nonfinite is None or not bool(self._nonfinite):
            return
        ids = self._buffers.nonfinite_ids()
        raise FloatingPointError(
            f"non-finite training loss in epoch {epoch}; samples with a non-finite loss: "
            f"{ids[:50] or 'unknown (no per-sample scores recorded)'}. "
            "No checkpoint or summary is written for this state."
        )

    # -- scoring passes ----------------------------------------------------------------------------
    def book_scoring_pass(
        self, epoch: int, rows: list[dict[str, torch.Tensor]], tokens: torch.Tensor, elapsed: float
    ) -> None:
        """Store a no-grad pass's scores (this rank's ``rows``; gathered here) and its cost."""
        merged = {k: torch.cat([r[k].detach().flatten().cpu() for r in rows]) for k in rows[0]}
        merged = self.comm.gather_rows(merged)
        self.store.update(merged.pop("sample_ids"), epoch, track_dynamics=False, **merged)
        pass_tokens = self.comm.sum({"t": torch.as_tensor(tokens).double().cpu()})["t"]
        self.totals["scoring_tokens"] += pass_tokens
        self._pass_tokens += pass_tokens
        if self.budget is not None:  # a batch plan's scoring forward is booked per step instead
            self.budget.book_scoring_pass(pass_tokens)
        self.totals["scoring_time_s"] += elapsed
        self.totals["train_time_s"] += elapsed

    # -- epoch end ---------------------------------------------------------------------------------
    @property
    def resumed_epoch_seconds(self) -> float:
        """Seconds the epoch resumed mid-way had trained before its checkpoint (else 0)."""
        return self._resume_elapsed

    def finish_epoch(self, epoch: int, elapsed: float | None = None) -> dict[str, Any]:
        """Merge the epoch's scores (all ranks), book its counters; returns its history entry.
        `elapsed`: the epoch's training seconds, by default the epoch clock's reading."""
        self.check_finite(epoch)
        if elapsed is None:
            elapsed = self.epoch_clock.elapsed()
        if self.store is not None:
            self._buffers.gather(self.comm)  # every rank records scores, or none does
            self._buffers.apply(self.store, epoch)
        counts = self.comm.sum({k: torch.as_tensor(v) for k, v in self._counters.items()})
        for k, v in counts.items():
            self.totals[k] = self.totals.get(k, 0.0) + v
        self.totals["train_time_s"] += elapsed
        plan = self.plans.get(epoch)
        n = self.store.num_samples if self.store is not None else 0
        entry = {
            "epoch": epoch,
            "planned_samples": int(plan.sample_ids.numel()) if plan else 0,
            "samples_trained": counts.get("samples_trained", 0.0),
            "tokens_trained": counts.get("tokens_trained", 0.0),
            "response_tokens": counts.get("response_tokens", 0.0),
            "scoring_tokens": counts.get("scoring_tokens", 0.0) + self._pass_tokens,
            "batches": self._batches_done,
            "plan_hash": plan_hash(plan.sample_ids) if plan else "",
            "time_s": elapsed,
            **(plan.info if plan else {}),
            **self._epoch_batch_info(),
        }
        entry["planned_keep_ratio"] = entry["planned_samples"] / max(n, 1)
        entry["realised_keep_ratio"] = entry["samples_trained"] / max(n, 1)
        if self.items is not None:
            entry.update(self.items.shares(counts))
        self._check_ranks_agree(epoch, plan)
        entry["world_size"] = self.comm.world_size
        self.history.append(entry)
        if self.export_dir is not None and plan is not None and self.comm.rank == 0:
            self._export(epoch, plan)
        # this epoch's plan stays: Lightning restores an end-of-epoch checkpoint at the epoch
        # it ended and builds (not runs) a loader for it before moving on, and re-planning it
        # would cost a scoring pass and change the statistics store
        if not self.keep_past_plans:
            self.plans = {e: p for e, p in self.plans.items() if e >= epoch}
        self.begin_epoch()
        self.epoch_clock.reset()
        self._pass_tokens, self._resume_at, self._resume_elapsed = 0.0, None, 0.0
        return entry

    def _check_ranks_agree(self, epoch: int, plan: EpochPlan | None) -> None:
        """Every rank must hold the same plan and, after the merge, the same statistics store."""
        if self.comm.world_size == 1:
            return
        if plan is not None and not self.comm.agree(digest(plan.sample_ids.sort().values)):
            raise RuntimeError(
                f"ranks computed different plans for epoch {epoch}: the strategy "
                f"{self.strategy.name!r} depends on rank-local state"
            )
        if self.store is not None:
            state = self.store.state_dict()
            fp = digest(*(v for k, v in sorted(state.items()) if k != "num_samples"))
            if not self.comm.agree(fp):
                raise RuntimeError(f"ranks hold different statistics stores after epoch {epoch}")

    def _export(self, epoch: int, plan: EpochPlan) -> None:
        """Write the epoch's kept ids (and weights) as plain JSON, atomically."""
        from qtune.runs.atomic import atomic_write_json

        atomic_write_json(
            f"{self.export_dir}/epoch_{epoch:03d}.json",
            {
                "epoch": epoch,
                "strategy": self.strategy.name,
                "sample_ids": plan.sample_ids.tolist(),
                "weights": None if plan.weights is None else plan.weights.tolist(),
                "plan_hash": plan_hash(plan.sample_ids),
            },
        )
        if self._token_rows:  # this rank's share of the batch plans' token masks
            rows = []
            for r in self._token_rows:
                for sid, keep, resp in zip(r["sample_ids"].tolist(), r["token_keep"], r["response_mask"]):
                    rows.append(
                        {
                            "sample_id": sid,
                            "response": resp.nonzero().flatten().tolist(),
                            "kept": keep.nonzero().flatten().tolist(),
                        }
                    )
            atomic_write_json(
                f"{self.export_dir}/tokens_epoch_{epoch:03d}.json",
                {"epoch": epoch, "coordinates": "label positions (label j predicts input token j + 1)", "rows": rows},
            )
            self._token_rows = []
