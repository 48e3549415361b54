import pytest
import torch

from qtune.pruning.sampler import PlanSampler, shard_plan


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 7, 10, 64])
def test_shards_are_equal_sized_and_cover_the_plan(world_size, n):
    plan = torch.arange(100, 100 + n)
    shards = [shard_plan(plan, seed=1, epoch=2, rank=r, world_size=world_size) for r in range(world_size)]
    sizes = {s.numel() for s in shards}
    assert sizes == {-(-n // world_size)}  # every rank runs the same number of samples
    union = torch.cat(shards)
    assert set(union.tolist()) == set(plan.tolist())  # together they cover the plan
    padding = union.numel() - n
    assert 0 <= padding < world_size
    if padding == 0:  # disjoint when no padding is needed
        assert union.unique().numel() == n


def test_disjoint_except_documented_padding():
    plan = torch.arange(10)
    shards = [shard_plan(plan, seed=0, epoch=0, rank=r, world_size=4) for r in range(4)]
    counts = torch.bincount(torch.cat(shards), minlength=10)
    assert counts.sum() == 12 and int((counts == 2).sum()) == 2 and int((counts == 0).sum()) == 0


def test_deterministic_per_seed_and_epoch():
    plan = torch.arange(50)
    a = shard_plan(plan, seed=3, epoch=1, rank=0, world_size=2)
    assert torch.equal(a, shard_plan(plan, seed=3, epoch=1, rank=0, world_size=2))
    assert not torch.equal(a, shard_plan(plan, seed=3, epoch=2, rank=0, world_size=2))
    assert not torch.equal(a, shard_plan(plan, seed=4, epoch=1, rank=0, world_size=2))


def test_iteration_is_pure_and_uses_no_global_rng():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    s = PlanSampler(torch.arange(20), seed=5, epoch=0, rank=1, world_size=2)
    first, second = list(s), list(s)
    assert first == second and len(s) == 10
    assert torch.equal(before, torch.get_rng_state())


def test_unshuffled_sharding_keeps_plan_order():
    plan = torch.tensor([9, 4, 7, 1])
    assert shard_plan(plan, seed=0, epoch=0, rank=1, world_size=2, shuffle=False).tolist() == [4, 1]


def test_empty_plan_and_bad_rank_are_errors():
    with pytest.raises(ValueError, match="empty"):
        shard_plan(torch.tensor([], dtype=torch.long), seed=0, epoch=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="rank"):
        shard_plan(torch.arange(4), seed=0, epoch=0, rank=2, world_size=2)


@pytest.mark.parametrize("world_size, multiple, n", [(1, 8, 13), (2, 4, 13), (3, 2, 7), (1, 5, 5)])
def test_whole_steps_pad_each_share_from_the_shuffled_plan(world_size, multiple, n):
    """Every rank gets ceil(ceil(n / ranks) / multiple) * multiple ids; the unpadded order
    is the plain shuffle's, and the padding repeats it from its start."""
    plan = torch.arange(100, 100 + n)
    plain = shard_plan(plan, seed=3, epoch=1, rank=0, world_size=1)
    per_rank = -(-(-(-n // world_size)) // multiple) * multiple
    total = per_rank * world_size
    expected = plain.repeat(-(-total // n))[:total]
    for rank in range(world_size):
        ids = shard_plan(plan, seed=3, epoch=1, rank=rank, world_size=world_size, multiple=multiple)
        assert ids.numel() == per_rank and ids.numel() % multiple == 0
        assert torch.equal(ids, expected[rank:total:world_size])
