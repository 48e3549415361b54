"""The mixin's data order: one global sequence per epoch, and equal scoring shares per rank."""

from collections import Counter

import pytest
import torch

from qtune.hf.sampling import global_epoch_order, scoring_shares


@pytest.mark.parametrize("n, world, batch", [(40, 2, 4), (41, 2, 4), (7, 3, 2), (5, 4, 8), (1, 1, 3)])
def test_scoring_shares_cover_every_sample_once_in_equal_batch_counts(n, world, batch):
    real_ids, counts = [], []
    for rank in range(world):
        shares = list(scoring_shares(n, rank, world, batch))
        counts.append(len(shares))
        for ids, real in shares:
            assert 0 < len(ids) <= batch and 0 <= real <= len(ids)
            assert set(ids[real:]) <= set(ids[:real]) | set(range(rank, n, world))  # pads repeat own ids
            assert all(i % world == rank for i in ids)
            real_ids += ids[:real]
    assert sorted(real_ids) == list(range(n))  # each sample scored once across the ranks
    assert len(set(counts)) == 1  # every rank runs as many forwards


@pytest.mark.parametrize("planned, step, world", [(20, 4, 2), (21, 4, 2), (5, 3, 3), (8, 8, 1)])
def test_global_order_pads_to_whole_rounds_and_is_the_same_for_every_rank(planned, step, world):
    plan = torch.randperm(100, generator=torch.Generator().manual_seed(1))[:planned]
    order = global_epoch_order(plan, seed=3, epoch=2, step_samples=step, world_size=world)
    assert len(order) % (step * world) == 0 and len(order) - planned < step * world
    counts = Counter(order.tolist())
    assert set(counts) == set(plan.tolist())
    assert sum(c - 1 for c in counts.values()) == len(order) - planned  # the pads are repeats
    # a function of (plan, seed, epoch) only: what every rank computes alike
    assert torch.equal(order, global_epoch_order(plan.clone(), seed=3, epoch=2, step_samples=step, world_size=world))
    assert not torch.equal(order, global_epoch_order(plan, seed=3, epoch=3, step_samples=step, world_size=world))
