import torch

from qtune.pruning.item_tracking import ItemTracker

META = [
    {"kind": "clean", "response_start": 3, "wrong_positions": []},
    {"kind": "noisy", "response_start": 2, "wrong_positions": [0, 2]},
    {"kind": "duplicate", "response_start": 4, "wrong_positions": []},
    {"kind": "noisy", "response_start": 3, "wrong_positions": [1]},
]


def test_kind_counts_of_trained_rows():
    t = ItemTracker(META)
    ids = torch.tensor([1, 3, 0, 2])
    counts = t.step_counts(ids, torch.tensor([True, False, True, True]))
    assert {k: int(v) for k, v in counts.items()} == {"trained_clean": 1, "trained_duplicate": 1, "trained_noisy": 1}
    shares = t.shares({"trained_noisy": 3.0, "trained_clean": 2.0}, epochs=2)
    assert shares["trained_share_noisy"] == 3 / 4 and shares["trained_share_clean"] == 1.0
    assert shares["trained_share_duplicate"] == 0.0


def test_wrong_token_flags_are_in_label_coordinates():
    t = ItemTracker(META)
    assert t.wrong_total == 3
    w = t.wrong_tokens(torch.tensor([1, 3]), length=6)
    # item 1: response starts at input position 2; wrong response tokens 0 and 2 are input
    # positions 2 and 4, predicted by labels at positions 1 and 3
    assert w[0].nonzero().flatten().tolist() == [1, 3]
    assert w[1].nonzero().flatten().tolist() == [3]  # item 3: input position 4 -> label 3
    assert t.wrong_tokens(torch.tensor([0]), length=10).shape == (1, 10)  # padded to length


def test_no_kinds_no_tracker():
    assert ItemTracker.maybe([{"label": 3}]) is None and ItemTracker.maybe(None) is None
