"""The epoch's dense statistics buffers give the store exactly what merging the concatenated
per-step rows gave (the path they replace), repeated ids, ranks and a mid-epoch resume included."""

import io
import threading
from types import SimpleNamespace

import pytest
import torch

from qtune.pruning.core import PruningCore
from qtune.pruning.distributed import Collective
from qtune.pruning.epoch_buffers import EpochBuffers, last_occurrence
from qtune.pruning.statistics_store import StatisticsStore
from qtune.pruning.train_step import StepRecord
from qtune.strategies import build_strategy

N = 40
ALL_KEYS = ("loss", "entropy", "el2n", "p_label", "margin", "accuracy", "num_tokens")


def random_rows(gen, steps, keys=ALL_KEYS, dtype=torch.float32, ntok_dtype=torch.long, n=N):
    """Steps of 1-8 ids drawn with replacement (repeats within and across steps), scores with
    NaN and inf, accuracy on both sides of 0.5, some samples without response tokens."""
    rows = []
    for _ in range(steps):
        b = int(torch.randint(1, 9, (1,), generator=gen))
        row = {"sample_ids": torch.randint(0, n, (b,), generator=gen)}
        for k in keys:
            if k == "num_tokens":
                v = torch.randint(0, 4, (b,), generator=gen).to(ntok_dtype)
            elif k == "accuracy":
                v = torch.tensor([0.0, 0.25, 0.5, 1.0, float("nan")])[torch.randint(0, 5, (b,), generator=gen)]
            else:
                v = torch.randn(b, generator=gen, dtype=torch.float64)
                odd = torch.rand(b, generator=gen)
                v = v.masked_fill(odd < 0.1, float("nan")).masked_fill((odd > 0.1) & (odd < 0.15), float("inf"))
            row[k] = v if k == "num_tokens" else v.to(dtype)
        rows.append(row)
    return rows


def reference_merge(store, rows, epoch):
    """The replaced path: each rank's rows joined, ranks concatenated in order, merged."""
    if rows:
        joined = {k: torch.cat([r[k].flatten() for r in rows]) for k in rows[0]}
        store.merge_updates(joined.pop("sample_ids"), epoch, **joined)


def assert_same_store(a: StatisticsStore, b: StatisticsStore):
    for k, v in a.state_dict().items():
        w = b.state_dict()[k]
        if torch.is_tensor(v) and v.is_floating_point():
            nan = v.isnan()
            assert torch.equal(nan, w.isnan()), k  # NaN payloads depend on the conversion's code path
            assert torch.equal(v[~nan].view(torch.int32), w[~nan].view(torch.int32)), k  # bit for bit
        elif torch.is_tensor(v):
            assert torch.equal(v, w), k
        else:
            assert v == w, k


def through_buffers(store, rows, epoch, buffers):
    buffers.reset()
    for r in rows:
        buffers.record(r["sample_ids"], {k: v for k, v in r.items() if k != "sample_ids"}, store.num_samples)
    buffers.apply(store, epoch)
    return buffers


def test_last_occurrence_marks_the_last_of_each_value():
    keys = torch.tensor([3, 1, 3, -1, 1, 3, -1, 7])
    assert last_occurrence(keys).tolist() == [False, False, False, False, True, True, True, True]
    assert last_occurrence(torch.tensor([5])).tolist() == [True]


@pytest.mark.parametrize("stage", [0, 5, 8192])  # written every step, every few, at the end
@pytest.mark.parametrize(
    "keys, dtype, ntok_dtype",
    [
        (ALL_KEYS, torch.float32, torch.long),
        (ALL_KEYS, torch.float64, torch.int32),
        (ALL_KEYS, torch.bfloat16, torch.float32),
        (("loss", "margin", "num_tokens"), torch.float16, torch.long),
        (("accuracy", "loss"), torch.float32, torch.long),  # no num_tokens: every write has signal
    ],
)
def test_buffers_give_the_store_the_rows_merge_over_several_epochs(keys, dtype, ntok_dtype, stage):
    gen = torch.Generator().manual_seed(len(keys) + dtype.itemsize)
    ref, new, buffers = StatisticsStore(N), StatisticsStore(N), EpochBuffers(stage)
    for epoch in range(4):  # dynamics (aum, forgetting) carry over epochs
        rows = random_rows(gen, 14, keys, dtype, ntok_dtype)
        reference_merge(ref, rows, epoch)
        buffers = through_buffers(new, rows, epoch, buffers)
        assert_same_store(ref, new)
    # the cases were exercised
    assert (ref.forgetting > 0).any() == ("accuracy" in keys) and (ref.aum_count > 1).any() == ("margin" in keys)


def test_a_repeat_in_one_step_keeps_its_last_write_and_any_forgetting():
    store, ref = StatisticsStore(4), StatisticsStore(4)
    store.learned[2] = ref.learned[2] = True
    rows = [
        {
            "sample_ids": torch.tensor([2, 2, 2, 1]),
            "accuracy": torch.tensor([0.0, 1.0, 1.0, 1.0]),  # forgotten, then learned again
            "margin": torch.tensor([0.5, 0.25, float("nan"), 1.0]),  # the last finite margin is 0.25
            "num_tokens": torch.tensor([2, 2, 0, 2]),  # the last write has no signal
        }
    ]
    reference_merge(ref, rows, 0)
    through_buffers(store, rows, 0, EpochBuffers(0))
    assert_same_store(ref, store)
    assert store.forgetting[2] == 1 and store.aum_sum[2] == 0.25 and store.learned[2]


def make_core(n=N):
    return PruningCore(build_strategy("full", seed=0), seed=0, num_samples=n)


def step(core, row, batch_idx):
    scores = {k: v for k, v in row.items() if k != "sample_ids"}
    loss = scores.get("loss", torch.zeros(1)).float().nan_to_num().mean()
    one = torch.ones(())
    core.record_batch(StepRecord(loss, row["sample_ids"], scores, one, one, one), batch_idx)


def round_trip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=True)


@pytest.mark.parametrize("old_format", [False, True])
def test_a_mid_epoch_resume_ends_the_epoch_with_the_same_store(old_format):
    gen = torch.Generator().manual_seed(7)
    first, second = random_rows(gen, 10), random_rows(gen, 10)
    ref = StatisticsStore(N)
    reference_merge(ref, random_rows(torch.Generator().manual_seed(1), 12), 0)
    core = make_core()
    core.store.load_state_dict(ref.state_dict())
    for i, row in enumerate(first):
        step(core, row, i)
    state = core.state_dict(1)
    if old_format:  # a checkpoint written while the core kept per-step rows
        state["epoch_progress"].pop("buffers")
        state["epoch_progress"]["rows"] = [{k: v.clone() for k, v in r.items()} for r in first]
    resumed = make_core()
    resumed.load_state_dict(round_trip(state))
    assert resumed.resuming(1) and resumed.batches_done == len(first)
    for i, row in enumerate(second):
        step(resumed, row, len(first) + i)
    resumed.finish_epoch(1, elapsed=0.0)
    reference_merge(ref, first + second, 1)
    assert_same_store(ref, resumed.store)


def test_the_mid_epoch_state_holds_only_the_written_entries_compactly():
    n = 100_000
    core = make_core(n)
    ids = torch.randperm(n)[: n // 2]
    scores = {k: torch.rand(ids.numel()) for k in ALL_KEYS if k != "num_tokens"}
    scores["num_tokens"] = torch.randint(1, 300, (ids.numel(),))
    for chunk in range(0, ids.numel(), 5000):
        row = {"sample_ids": ids[chunk : chunk + 5000], **{k: v[chunk : chunk + 5000] for k, v in scores.items()}}
        step(core, row, chunk // 5000)
    state = core.state_dict(0)["epoch_progress"]["buffers"]
    size = sum(v.numel() * v.element_size() for v in state["columns"].values())
    size += sum(state[k].numel() * state[k].element_size() for k in ("written", "signal", "flags", "aum_at", "aum"))
    assert size / ids.numel() < 27  # 6 float32 fields, int16 token counts, a few bits
    assert state["aum"].numel() == 0  # each sample's margin is its aum: nothing repeated


def test_check_finite_names_the_samples_with_a_non_finite_loss():
    core = make_core()
    loss = torch.tensor([0.5, float("nan"), float("inf"), float("nan")])
    row = {"sample_ids": torch.tensor([4, 9, 11, 12]), "loss": loss, "num_tokens": torch.tensor([3, 3, 3, 0])}
    scores = {k: v for k, v in row.items() if k != "sample_ids"}
    one = torch.ones(())
    core.record_batch(StepRecord(loss.mean(), row["sample_ids"], scores, one, one, one), 0)
    with pytest.raises(FloatingPointError, match=r"\[9, 11\]"):  # 12 has no response tokens
        core.check_finite(0)


def test_changing_score_keys_within_an_epoch_is_refused():
    b = EpochBuffers()
    b.record(torch.tensor([1]), {"loss": torch.ones(1)}, 5)
    with pytest.raises(ValueError, match="same per-sample scores"):
        b.record(torch.tensor([2]), {"loss": torch.ones(1), "margin": torch.ones(1)}, 5)
    with pytest.raises(KeyError, match="unknown score fields"):
        EpochBuffers().record(torch.tensor([1]), {"bogus": torch.ones(1)}, 5)


class _Group:
    """Ranks as threads: each collective hands every rank's tensor to every rank."""

    def __init__(self, world):
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world, timeout=60)

    def exchange(self, rank, t):
        self.slots[rank] = t.clone()
        self.barrier.wait()
        got = list(self.slots)
        self.barrier.wait()
        return got


class _RankStrategy:
    root_device = torch.device("cpu")

    def __init__(self, group, rank):
        self.group, self.rank = group, rank

    def reduce(self, t, reduce_op="sum"):
        got = torch.stack(self.group.exchange(self.rank, t))
        return (got.sum(0) if reduce_op == "sum" else got.amax(0)).to(t.dtype)

    def all_gather(self, t):
        return torch.stack(self.group.exchange(self.rank, t))


def test_ranks_end_with_the_store_of_the_rows_gathered_in_rank_order():
    world, gen = 3, torch.Generator().manual_seed(3)
    group = _Group(world)
    per_rank = [random_rows(gen, 8) for _ in range(world)]  # ids repeat across ranks too
    cores = [make_core() for _ in range(world)]
    errors = []

    def run(rank):
        try:
            core = cores[rank]
            backend = SimpleNamespace(world_size=world, global_rank=rank, strategy=_RankStrategy(group, rank))
            core.comm = Collective(backend)
            for i, row in enumerate(per_rank[rank]):
                step(core, row, i)
            core.finish_epoch(0, elapsed=0.0)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    ref = StatisticsStore(N)
    reference_merge(ref, [r for rows in per_rank for r in rows], 0)
    for core in cores:
        assert_same_store(ref, core.store)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_buffers_on_the_gpu_give_the_same_store():
    """On CUDA a repeated index in one ``index_put_`` lands in any order: the buffers must
    resolve repeats themselves."""
    gen = torch.Generator().manual_seed(11)
    ref, new, buffers = StatisticsStore(N), StatisticsStore(N), EpochBuffers(64)
    for epoch in range(3):
        rows = random_rows(gen, 30)
        reference_merge(ref, rows, epoch)
        through_buffers(new, [{k: v.cuda() for k, v in r.items()} for r in rows], epoch, buffers)
        assert buffers.values.is_cuda
        assert_same_store(ref, new)
