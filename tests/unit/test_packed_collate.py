"""collate_packed: rows of samples into one batch, each sample's labels and positions its own."""

from __future__ import annotations

import pytest
import torch
from packed_reference import make_items, packed_and_padded

from qtune.data.packed_collate import collate_packed
from qtune.data.sft import IGNORE_INDEX
from qtune.pruning.batch_stats import next_token_labels
from qtune.pruning.planned_step import forward_tokens


def item(sid, ids, labels):
    return {"sample_id": sid, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


def test_layout_of_two_rows():
    a = item(5, [11, 12, 13], [-100, 12, 13])
    b = item(6, [21, 22], [21, 22])  # no prompt: its first label is a response token
    c = item(7, [31, 32, 33, 34], [-100, -100, 33, 34])
    batch = collate_packed([[a, b], [c]], pad_id=0)
    assert batch["sample_id"].tolist() == [5, 6, 7]
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22], [31, 32, 33, 34, 0]]
    # first position of each sample and padding: -100, so no target crosses a boundary
    assert batch["labels"].tolist() == [[-100, 12, 13, -100, 22], [-100, -100, 33, 34, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["seg"].tolist() == [[0, 0, 0, 1, 1], [2, 2, 2, 2, -1]]
    assert batch["sample_length"].tolist() == [3, 2, 4]
    assert "attention_mask" not in batch
    assert int(forward_tokens(batch)) == 9
    # all-token labels (Q-Tuning's entropy over every token) stop at boundaries and padding
    assert next_token_labels(batch).tolist() == [[12, 13, -100, 22], [32, 33, 34, -100]]


def test_truncation_and_errors():
    long = item(1, list(range(3, 13)), [-100] * 4 + list(range(7, 13)))
    batch = collate_packed([[long]], max_tokens_per_row=6)
    assert batch["input_ids"].tolist() == [[3, 4, 5, 6, 7, 8]]
    assert batch["labels"].tolist() == [[-100, -100, -100, -100, 7, 8]]
    with pytest.raises(ValueError, match="data.max_tokens_per_row=6"):
        collate_packed([[item(1, [3, 4, 5, 6], [3, 4, 5, 6]), item(2, [3, 4, 5], [3, 4, 5])]], max_tokens_per_row=6)
    with pytest.raises(ValueError, match="at least one sample"):
        collate_packed([[long], []])


@pytest.mark.parametrize("seed", range(5))
def test_targets_are_the_padded_ones(seed):
    """Each sample's (input, target) pairs in the packed batch are exactly the padded batch's,
    and the packed batch has no other target: nothing crosses a boundary."""
    packed, padded = packed_and_padded(make_items(23, seed), cap=24, seed=seed)
    assert packed["input_ids"].shape[1] <= 24

    def pairs(ids, labels):  # (position, input, target)
        return [(j, int(x), int(y)) for j, (x, y) in enumerate(zip(ids[:-1], labels[1:])) if y != IGNORE_INDEX]

    got, want = [], []
    for s in range(packed["sample_id"].numel()):
        on = packed["seg"] == s
        row = int(on.nonzero()[0, 0])
        ids, labels = packed["input_ids"][row][on[row]], packed["labels"][row][on[row]]
        assert packed["position_ids"][row][on[row]].tolist() == list(range(len(ids)))
        got.append(pairs(ids, labels))
        n = int(padded["attention_mask"][s].sum())
        want.append(pairs(padded["input_ids"][s, :n], padded["labels"][s, :n]))
    assert got == want
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
