"""What the pruning core puts in a checkpoint, and how a resumed run picks it back up.

Split from the callback because resuming has cases of its own: a checkpoint taken in the
middle of an epoch (each rank's written statistics, counters and RNG state for the half-done
epoch; older checkpoints' per-step rows are converted), one
taken after an epoch's last batch but before its end-of-epoch bookkeeping (Lightning then
resumes at the next epoch and never calls ``on_train_epoch_end`` for it), and a run resumed
with other settings than the ones it was started with (an error naming the keys).
Everything stored is tensors and plain values, loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

import torch

from qtune.pruning.rng import capture_rng, pack_state, restore_rng, unpack_state
from qtune.pruning.statistics_store import StatisticsStore
from qtune.strategies.base import EpochPlan


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' for every leaf that differs between two nested dicts."""
    a, b = _flat(saved), _flat(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


class ResumeState:
    """Mixin for PruningCore: ``state_dict`` / ``load_state_dict`` and resume bookkeeping.
    Ranks come from ``self.comm``; the integration passes the epoch in progress."""

    def _run_config(self) -> dict[str, Any]:
        """Settings a resumed run must share with the run that wrote the checkpoint."""
        cfg: dict[str, Any] = {"seed": self.seed}
        if self.strategy_config is not None:
            cfg["strategy"] = self.strategy_config
        if self.data_fingerprint is not None:  # the data a resume must train on
            cfg["data"] = self.data_fingerprint
        if self.reference_identity:  # what a token rule compares with
            cfg["reference"] = self.reference_identity
        return cfg

    def _epoch_progress(self, epoch: int) -> dict[str, Any]:
        """This rank's share of the current epoch (a checkpoint mid-epoch resumes from it)."""
        elapsed = self.epoch_clock.elapsed()
        return {
            "epoch": int(epoch),
            "world_size": self.comm.world_size,
            "batches_done": self._batches_done,
            "batch_size": self.batch_size,
            "packing": self.packing_layout,
            "time_s": elapsed if self._batches_done else 0.0,
            "buffers": self._buffers.state_dict(),
            "counters": {k: torch.as_tensor(v).cpu() for k, v in self._counters.items()},
            "batch_info": {k: float(v) for k, v in self._batch_info.items()},
            "token_rows": list(self._token_rows),
        }

    def _plans_to_save(self):
        """The plans a resume needs: the last finished epoch's (Lightning builds that epoch's
        loader again on resuming an end-of-epoch checkpoint) and later ones. Past plans a
        ``keep_past_plans`` core holds stay in memory only, so checkpoints do not grow."""
        last = self.history[-1]["epoch"] if self.history else None
        return [(e, p) for e, p in self.plans.items() if last is None or e >= last]

    def state_dict(self, epoch: int = 0) -> dict[str, Any]:
        multi = self.comm.world_size > 1
        progress = self._epoch_progress(epoch)
        rng = capture_rng()
        rule = getattr(self.strategy, "token_rule", None)  # a composed token rule's own state
        return {
            "strategy_name": self.strategy.name,
            "config": self._run_config(),
            "strategy": self.strategy.state_dict(),
            "token_rule": None if rule is None else rule.state_dict(),
            "store": self.store.state_dict() if self.store is not None else None,
            "plans": {e: {"ids": p.sample_ids, "weights": p.weights, "info": p.info} for e, p in self._plans_to_save()},
            "history": self.history,
            "totals": dict(self.totals),
            "epoch_progress": progress,
            "rng": rng,
            # every rank's own progress and RNG state: ranks train different samples and draw
            # different dropout masks (collectives: Lightning builds checkpoints on all ranks)
            "progress_per_rank": self.comm.per_rank(pack_state(progress)) if multi else None,
            "rng_per_rank": self.comm.per_rank(pack_state(rng)) if multi else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy_name") != self.strategy.name:
            raise ValueError(
                f"checkpoint was made with strategy {state.get('strategy_name')!r}, "
                f"this run uses {self.strategy.name!r}"
            )
        saved_cfg, mine = state.get("config") or {}, self._run_config()
        shared = saved_cfg.keys() & mine.keys()  # a library callback may not know its config
        diff = config_differences({k: saved_cfg[k] for k in shared}, {k: mine[k] for k in shared})
        if state.get("config") is not None and diff:
            raise ValueError(
                "checkpoint was made with other settings than this run ("
                + "; ".join(diff)
                + "): resume with the settings it was made with"
            )
        self.strategy.load_state_dict(state["strategy"])
        rule = getattr(self.strategy, "token_rule", None)
        if rule is not None and state.get("token_rule") is not None:
            rule.load_state_dict(state["token_rule"])
        if state["store"] is not None:
            if self.store is None:
                self.store = StatisticsStore(int(state["store"]["num_samples"]))
            self.store.load_state_dict(state["store"])
        self.plans = {int(e): EpochPlan(p["ids"], p["weights"], dict(p["info"])) for e, p in state["plans"].items()}
        self.history = list(state["history"])
        self.totals = dict(state["totals"])
        rank, world = self.comm.rank, self.comm.world_size
        progress = state.get("epoch_progress")
        per_rank = state.get("progress_per_rank")
        if per_rank is not None and len(per_rank) == world:
            progress = unpack_state(per_rank[rank])
        if progress and progress["batches_done"] > 0:
            saved_world = int(progress.get("world_size", 1))
            if saved_world != world:
                raise ValueError(
                    f"this checkpoint was taken mid-epoch with {saved_world} ranks; resuming it on "
                    f"{world} would re-shard a half-trained epoch. Resume on {saved_world} ranks, "
                    "or from an end-of-epoch checkpoint (plans re-shard at epoch boundaries)"
                )
            self._resume_at = (int(progress["epoch"]), int(progress["batches_done"]))
            self._resume_batch_size = progress.get("batch_size")
            self._resume_packing = progress.get("packing")
            self._resume_elapsed = float(progress.get("time_s", 0.0))
            self._batches_done = int(progress["batches_done"])
            self._buffers.reset()
            if progress.get("buffers") is not None:
                self._buffers.load_state_dict(progress["buffers"])
            elif progress.get("rows") and self.store is not None:  # written before the buffers
                self._buffers.load_rows(list(progress["rows"]), self.store.num_samples)
            self._counters = dict(progress["counters"])
            self._batch_info = dict(progress["batch_info"])
            self._token_rows = list(progress.get("token_rows", []))
        rngs = state.get("rng_per_rank")
        if rngs is not None and len(rngs) == world:
            restore_rng(unpack_state(rngs[rank]))
        elif "rng" in state:  # single process, or another world size: rank 0's state
            restore_rng(state["rng"])

    def samples_to_skip(self, epoch: int, batch_size: int, key: str = "batch_size") -> int:
        """This rank's items of `epoch` already trained before a mid-epoch checkpoint (0
        otherwise): samples, or rows when the loader packs (``packing_layout``; a row's samples
        are a pure function of the plan and the packing). Another batch size or packing than
        the checkpoint's is refused, naming the key: the same count of batches would then
        retrain or skip samples."""
        if not self.resuming(epoch):
            return 0
        if self._resume_batch_size not in (None, batch_size):
            raise ValueError(
                f"this checkpoint was taken mid-epoch with batch size {self._resume_batch_size}; "
                f"this run uses {batch_size} ({key}), which would retrain or skip samples. Resume "
                "with the same batch size, or from an end-of-epoch checkpoint"
            )
        if self._resume_packing != self.packing_layout:
            raise ValueError(
                f"this checkpoint was taken mid-epoch with packing {self._resume_packing}; this run "
                f"packs with {self.packing_layout} (config keys data.packing, data.max_tokens_per_row, "
                "data.packing_policy), which would retrain or skip samples. Resume with the same "
                "packing, or from an end-of-epoch checkpoint"
            )
        return self._resume_at[1] * batch_size

    def settle_resume(self, current_epoch: int) -> None:
        """Finish an epoch the checkpoint holds complete but unbooked, before the next epoch's
        plan is made (that plan may depend on the epoch's scores); time a half-done epoch
        from where it stopped. Lightning calls neither epoch hook in these two cases. Returns
        the history entry of an epoch booked here, if any."""
        if self._resume_at is None:
            return None
        epoch = self._resume_at[0]
        if epoch < current_epoch:
            entry = self.finish_epoch(epoch, self._resume_elapsed)
            self.epoch_clock.start()
            return entry
        if epoch == current_epoch:
            self.epoch_clock.start(self._resume_elapsed)
        return None
