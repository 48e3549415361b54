"""The data digest follows the items' tokens and labels in order, and nothing else."""

import torch

from qtune.data.digits import ClassifyDataset
from qtune.data.fingerprint import dataset_digest
from qtune.data.sft import SFTDataset, TokenizedExample


def sft(rows):
    return SFTDataset([TokenizedExample(prompt_ids=p, response_ids=r) for p, r in rows])


def test_the_same_items_give_the_same_digest_and_any_change_another():
    rows = [([1, 2, 3], [4, 5]), ([6, 7], [8])]
    base = dataset_digest(sft(rows))
    assert base == dataset_digest(sft([list(map(list, r)) for r in rows]))  # rebuilt: same
    assert base != dataset_digest(sft([([1, 2, 3], [4, 9]), ([6, 7], [8])]))  # one answer token
    assert base != dataset_digest(sft(rows[::-1]))  # order: sample ids move
    assert base != dataset_digest(sft([([1, 2], [3, 4, 5]), ([6, 7], [8])]))  # same tokens, other split
    assert len(base) == 16 and int(base, 16) >= 0


def test_classification_data_and_plain_items():
    x, y = torch.arange(12.0).view(4, 3), torch.tensor([0, 1, 0, 1])
    a = dataset_digest(ClassifyDataset(x, y))
    assert a == dataset_digest(ClassifyDataset(x.clone(), y.clone()))
    assert a != dataset_digest(ClassifyDataset(x, torch.tensor([0, 1, 1, 1])))
    items = [{"sample_id": i, "input_ids": torch.tensor([i, i + 1])} for i in range(3)]
    shifted = [{"sample_id": i + 10, "input_ids": torch.tensor([i, i + 1])} for i in range(3)]
    assert dataset_digest(items) == dataset_digest(shifted)  # the ids are positions, not content
    assert dataset_digest(items) != dataset_digest(items[:2])
