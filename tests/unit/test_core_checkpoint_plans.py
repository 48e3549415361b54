"""A checkpoint holds the plans a resume needs, not every past epoch's: its size stays flat
over epochs even when the core keeps past plans in memory (the Hugging Face mixin does)."""

import torch

from qtune.pruning.core import PruningCore
from qtune.pruning.train_step import StepRecord
from qtune.strategies import build_strategy

N = 50


def make_core():
    return PruningCore(build_strategy("random", seed=0, keep_ratio=0.5), seed=0, num_samples=N, keep_past_plans=True)


def test_saved_plans_stay_flat_over_epochs_while_memory_keeps_them():
    core, one = make_core(), torch.ones(())
    for epoch in range(6):
        plan = core.plan_epoch(epoch, 6)
        ids = plan.sample_ids
        core.record_batch(StepRecord(one, ids, {"loss": torch.rand(ids.numel())}, one, one, one), 0)
        assert sorted(core.state_dict(epoch)["plans"]) == ([epoch - 1, epoch] if epoch else [0])  # mid-epoch
        core.finish_epoch(epoch, elapsed=0.0)
        assert sorted(core.state_dict(epoch + 1)["plans"]) == [epoch]  # the epoch just ended
    assert sorted(core.plans) == list(range(6))  # a user still reads every past plan
    resumed = make_core()
    resumed.load_state_dict(core.state_dict(6))
    assert torch.equal(resumed.plan_epoch(6, 6).sample_ids, core.plan_epoch(6, 6).sample_ids)
