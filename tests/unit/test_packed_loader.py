"""The pruning callback's packed train loader: the epoch's kept samples in rows, rows sharded
over ranks in equal counts, plan weights and wrong-token flags per sample, skip by rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from packed_reference import make_items

from qtune.data.packing_config import Packing, packing_from
from qtune.lightning.callback import PruningCallback
from qtune.pruning.batch_extras import BatchExtras
from qtune.pruning.packed_epoch import sample_lengths
from qtune.pruning.segments import SegmentMap
from qtune.strategies import EpochPlan, PruningStrategy

N = 41


class Items(torch.utils.data.Dataset):
    """Items of odd lengths with sample ids 0..N-1; reads are counted."""

    def __init__(self):
        self.items = [dict(it, sample_id=i) for i, it in enumerate(make_items(N, 4))]
        self.reads = 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.reads += 1
        return self.items[i]


class EveryOtherWeighted(PruningStrategy):
    """Keeps the even ids, weighting id i by 1 + i / 100: weights tell samples apart."""

    name = "every_other_weighted"

    def epoch_plan(self, ctx):
        ids = torch.arange(0, ctx.num_samples, 2)
        return EpochPlan(ids, 1 + ids.float() / 100)


def loader(dataset, rank=0, world=1, epoch=0, cap=24, rows=3, callback=None):
    cb = callback or PruningCallback(EveryOtherWeighted(), seed=3)
    cb._trainer = SimpleNamespace(current_epoch=epoch, max_epochs=2, global_rank=rank, world_size=world)
    return cb, cb.dataloader(dataset, batch_size=rows, packing=Packing(cap, "refuse", pad_id=0))


def test_rows_hold_the_plan_and_weights_follow_samples():
    data = Items()
    cb, dl = loader(data)
    batches = list(dl)
    ids = torch.cat([b["sample_id"] for b in batches])
    assert sorted(ids.tolist()) == list(range(0, N, 2))  # each kept sample once, nothing else
    for b in batches:
        assert b["input_ids"].shape[0] <= 3 and b["input_ids"].shape[1] <= 24
        assert torch.equal(b["sample_weight"], 1 + b["sample_id"].float() / 100)
        lengths = torch.tensor([len(data.items[i]["input_ids"]) for i in b["sample_id"].tolist()])
        assert torch.equal(b["sample_length"], lengths)
    info = cb.plans[0].info
    assert info["packing_rows"] == sum(b["input_ids"].shape[0] for b in batches)
    assert info["packing_tokens"] == sum(len(data.items[i]["input_ids"]) for i in ids.tolist())
    assert info["packing_truncated"] == 0 and info["max_tokens_per_row"] == 24
    assert cb.core.packing_layout == {"max_tokens_per_row": 24, "policy": "refuse"}


def test_lengths_are_read_once_per_dataset():
    data = Items()
    cb, _ = loader(data)
    reads = data.reads
    assert reads == N  # a dataset without token lists: every item read once
    loader(data, epoch=1, callback=cb)
    assert data.reads == reads  # the next epoch reuses them (no item read to build the loader)


class Tokenised(Items):
    """Keeps its token lists (as ``SFTDataset`` does): lengths come from them, no item is read."""

    @property
    def input_ids(self):
        return [it["input_ids"] for it in self.items]


def test_lengths_of_a_tokenised_dataset_need_no_item_reads():
    data = Tokenised()
    assert sample_lengths(data).tolist() == [len(it["input_ids"]) for it in data.items]
    assert data.reads == 0


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_get_the_same_rows_in_equal_counts(world):
    data = Items()
    per_rank = [[b["sample_id"] for b in loader(data, rank=r, world=world, rows=2)[1]] for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1  # every rank runs as many batches
    seen = torch.cat([torch.cat(p) for p in per_rank]).tolist()
    assert set(seen) == set(range(0, N, 2))  # together the whole plan; repeats are padding rows only
    single = torch.cat([b["sample_id"] for b in loader(data, rows=2)[1]])
    assert len(seen) >= len(single)


def test_skip_drops_whole_rows_of_this_rank():
    data = Items()
    cb, dl = loader(data, rows=2)
    every = [b["sample_id"].tolist() for b in dl]
    cb.core._resume_at, cb.core._resume_batch_size = (0, 2), 2
    cb.core._resume_packing = {"max_tokens_per_row": 24, "policy": "refuse"}
    _, resumed = loader(data, rows=2, callback=cb)
    assert [b["sample_id"].tolist() for b in resumed] == every[2:]
    assert len(resumed.sampler) == len(dl.sampler)  # Lightning's batch counter still ends the epoch
    cb.core._resume_packing = {"max_tokens_per_row": 32, "policy": "refuse"}
    with pytest.raises(ValueError, match="data.max_tokens_per_row"):
        loader(data, rows=2, callback=cb)


def test_too_long_samples_are_refused_or_cut():
    data = Items()
    longest = max(len(it["input_ids"]) for it in data.items)
    with pytest.raises(ValueError, match="data.max_tokens_per_row=10"):
        loader(data, cap=10)
    cb = PruningCallback(EveryOtherWeighted(), seed=3)
    cb._trainer = SimpleNamespace(current_epoch=0, max_epochs=2, global_rank=0, world_size=1)
    dl = cb.dataloader(data, batch_size=4, packing=Packing(10, "truncate"))
    batches = list(dl)
    assert max(b["input_ids"].shape[1] for b in batches) <= 10 < longest
    want = sum(len(data.items[i]["input_ids"]) > 10 for i in range(0, N, 2))
    assert cb.plans[0].info["packing_truncated"] == want > 0
    assert all(int(b["sample_length"].max()) <= 10 for b in batches)


def test_wrong_token_flags_follow_each_sample_into_its_row():
    items = [dict(it, sample_id=i) for i, it in enumerate(make_items(12, 9))]
    width = max(len(it["input_ids"]) for it in items)
    g = torch.Generator().manual_seed(0)
    wrong = torch.rand(12, width, generator=g) > 0.5  # flags by token position
    from qtune.data.packed_collate import collate_packed

    rows = [items[0:3], items[3:5], items[5:9]]
    batch = BatchExtras(collate_packed, None, wrong)(rows)
    flags = batch["wrong_tokens"]
    assert flags.shape == batch["input_ids"].shape
    labels = SegmentMap.labels(batch)
    per_sample = labels.to_samples(flags[:, :-1], width - 1, fill=False)
    for s, sid in enumerate(batch["sample_id"].tolist()):
        n = len(items[sid]["input_ids"])
        # label j of a sample predicts its token j + 1: the padded path's wrong_by_id[:, 1:]
        assert torch.equal(per_sample[s, : n - 1], wrong[sid, 1:n])
        assert not per_sample[s, n - 1 :].any()


def test_packing_from_the_data_group():
    assert packing_from({"packing": False, "max_length": 64}) is None
    assert packing_from({"max_length": 64}) is None  # off unless asked for
    # rows as long as one sample may be (data.max_length) unless max_tokens_per_row says
    assert packing_from({"packing": True, "max_length": 64}, pad_id=3) == Packing(64, "refuse", 3)
    got = packing_from({"packing": True, "max_length": 64, "max_tokens_per_row": 200, "packing_policy": "truncate"})
    assert got == Packing(200, "truncate", 0)
    assert packing_from({"packing": True, "max_length": None}) == Packing(None, "refuse", 0)  # the longest sample
    with pytest.raises(ValueError, match="data.packing_policy"):
        packing_from({"packing": True, "packing_policy": "drop"})
