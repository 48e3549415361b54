"""The packer: best-fit-decreasing rows, a pure function of (plan, lengths, cap, seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest

from qtune.data.packing import best_fit_decreasing, pack_plan, packing_counts


def naive_bfd(lengths, cap):
    """One sample at a time: the row with the least room that fits, the most recently filled
    on a tie; samples by decreasing length, plan order on ties."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    room, stamp, row_of = [], [], [0] * len(lengths)
    for t, i in enumerate(order):
        fits = [r for r in range(len(room)) if room[r] >= lengths[i]]
        if fits:
            r = min(fits, key=lambda r: (room[r], -stamp[r]))
        else:
            room.append(cap)
            stamp.append(0)
            r = len(room) - 1
        room[r] -= lengths[i]
        stamp[r] = t + 1
        row_of[i] = r
    return row_of, order


@pytest.mark.parametrize("trial", range(40))
def test_bfd_matches_one_at_a_time(trial):
    rng = np.random.default_rng(trial)
    cap = int(rng.integers(1, 40))
    n = int(rng.integers(0, 60))
    lengths = rng.integers(1, cap + 1, size=n)
    if trial % 3 == 0:  # many equal lengths: the grouped placement's case
        lengths = np.minimum(rng.choice([1, 2, 3, cap // 2 or 1, cap], size=n), cap)
    row_of, order = best_fit_decreasing(lengths, cap)
    want_rows, want_order = naive_bfd(lengths.tolist(), cap)
    assert order.tolist() == want_order
    assert row_of.tolist() == want_rows


def test_rows_hold_every_sample_once_within_the_cap():
    rng = np.random.default_rng(1)
    ids = rng.permutation(10_000)[:500] + 7
    lengths = rng.integers(1, 300, size=500)
    plan = pack_plan(ids, lengths, 512, seed=3, epoch=2)
    assert sorted(plan.sample_ids.tolist()) == sorted(ids.tolist())
    by_id = dict(zip(ids.tolist(), lengths.tolist()))
    assert [by_id[i] for i in plan.sample_ids.tolist()] == plan.lengths.tolist()
    assert plan.row_tokens().max() <= 512
    assert sum(len(r) for r in plan.rows()) == 500
    # best fit leaves at most one row half empty or less
    assert (plan.row_tokens() <= 256).sum() <= 1


def test_pure_and_shuffled_by_seed_and_epoch():
    rng = np.random.default_rng(2)
    ids, lengths = np.arange(400), rng.integers(1, 100, size=400)
    a = pack_plan(ids, lengths, 256, seed=5, epoch=1)
    b = pack_plan(ids.tolist(), lengths.tolist(), 256, seed=5, epoch=1)
    assert a.sample_ids.tolist() == b.sample_ids.tolist() and a.offsets.tolist() == b.offsets.tolist()
    c = pack_plan(ids, lengths, 256, seed=5, epoch=2)
    unshuffled = pack_plan(ids, lengths, 256, seed=5, epoch=1, shuffle=False)
    as_sets = lambda p: sorted(tuple(r.tolist()) for r in p.rows())  # noqa: E731
    assert as_sets(a) == as_sets(c) == as_sets(unshuffled)  # same rows ...
    assert [r.tolist() for r in a.rows()] != [r.tolist() for r in c.rows()]  # ... another order
    assert unshuffled.row_tokens()[0] >= unshuffled.row_tokens()[-1]


def test_refuse_names_the_sample_and_the_key():
    with pytest.raises(ValueError, match=r"sample 12 has 9 tokens.*data\.max_tokens_per_row=8"):
        pack_plan([10, 11, 12], [3, 8, 9], 8, seed=0, epoch=0)
    with pytest.raises(ValueError, match="policy"):
        pack_plan([10], [3], 8, seed=0, epoch=0, policy="drop")
    with pytest.raises(ValueError, match="sample 11 has length 0"):
        pack_plan([10, 11], [3, 0], 8, seed=0, epoch=0)


def test_truncate_keeps_the_first_tokens_and_counts_them():
    plan = pack_plan([10, 11, 12], [3, 8, 20], 8, seed=0, epoch=0, policy="truncate")
    assert plan.truncated == 1
    assert dict(zip(plan.sample_ids.tolist(), plan.lengths.tolist())) == {10: 3, 11: 8, 12: 8}
    counts = packing_counts(plan, [3, 8, 20], batch_size=3)
    assert counts["tokens"] == 19 and counts["truncated"] == 1
    assert counts["padded_slots"] == 24 and counts["rows"] == 3


def test_counts_against_padded_batching():
    lengths = [5, 1, 4, 2, 8]
    plan = pack_plan(np.arange(5), lengths, 8, seed=0, epoch=0, shuffle=False)
    assert [r.tolist() for r in plan.rows()] == [[4], [0, 3, 1], [2]]
    c = packing_counts(plan, lengths, batch_size=2, rows_per_batch=2)
    # padded: [5, 1] -> 10, [4, 2] -> 8, [8] -> 8; packed rows of 8, 8, 4 tokens: [8, 8] -> 16, [4] -> 4
    assert (c["padded_slots"], c["packed_slots"], c["tokens"]) == (26, 20, 20)
    assert c["padded_padding_share"] == pytest.approx(6 / 26) and c["packed_padding_share"] == 0.0
    assert (c["padded_batches"], c["packed_batches"]) == (3, 2)
    with pytest.raises(ValueError, match="lengths"):
        packing_counts(plan, [5, 1, 4, 2, 7], batch_size=2)


def test_empty_plan():
    plan = pack_plan([], [], 8, seed=0, epoch=0)
    assert plan.num_rows == 0 and plan.rows() == []
