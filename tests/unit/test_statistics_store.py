import pytest
import torch

from qtune.pruning.statistics_store import StatisticsStore


def test_update_writes_by_sample_id_and_marks_no_signal_nan():
    s = StatisticsStore(5)
    s.update(torch.tensor([3, 1]), epoch=2, loss=torch.tensor([0.5, 2.0]), num_tokens=torch.tensor([4, 0]))
    assert s.loss[3] == 0.5 and torch.isnan(s.loss[1])  # zero response tokens: no signal
    assert s.seen_epoch.tolist() == [-1, 2, -1, 2, -1]
    assert torch.isnan(s.loss[[0, 2, 4]]).all()
    assert s.ppl[3] == pytest.approx(torch.tensor(0.5).exp().item())


def test_dynamics_accumulate_margin_and_forgetting():
    s = StatisticsStore(2)
    ids = torch.tensor([0, 1])
    for acc, margin in [([1.0, 0.0], [0.4, -0.2]), ([0.0, 1.0], [-0.1, 0.3]), ([1.0, 1.0], [0.2, 0.1])]:
        s.update(ids, 0, accuracy=torch.tensor(acc), margin=torch.tensor(margin), num_tokens=torch.tensor([1, 1]))
    assert s.forgetting.tolist() == [1, 0]  # sample 0 was learned, then forgotten once
    torch.testing.assert_close(s.aum, torch.tensor([0.5 / 3, 0.2 / 3]))


def test_state_round_trip_and_size_check():
    s = StatisticsStore(3)
    s.update(torch.tensor([0, 2]), 1, loss=torch.tensor([1.0, 3.0]), num_tokens=torch.tensor([2, 2]))
    t = StatisticsStore(3)
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.seen_epoch, s.seen_epoch) and torch.allclose(t.loss, s.loss, equal_nan=True)
    with pytest.raises(ValueError, match="different dataset"):
        StatisticsStore(4).load_state_dict(s.state_dict())
    with pytest.raises(KeyError, match="unknown score fields"):
        s.update(torch.tensor([0]), 0, bogus=torch.tensor([1.0]))
