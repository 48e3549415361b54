"""The epoch clock on a hand-driven time source: pauses, carried seconds, resets."""

import pytest

from qtune.pruning import epoch_clock
from qtune.pruning.epoch_clock import EpochClock


@pytest.fixture
def at(monkeypatch):
    """``at(t)`` sets what the clock reads next."""
    t = [0.0]
    monkeypatch.setattr(epoch_clock, "now", lambda: t[0])
    return lambda v: t.__setitem__(0, float(v))


def test_elapsed_leaves_out_paused_time(at):
    c = EpochClock()
    assert not c.running and c.elapsed() == 0.0
    at(10)
    c.start()
    at(13)
    c.pause()
    at(20)
    assert c.elapsed() == 3.0  # frozen while paused
    c.pause()  # a second pause changes nothing
    at(25)
    c.resume()
    at(26)
    assert c.running and c.elapsed() == 4.0
    c.resume()  # resuming a running clock changes nothing
    assert c.elapsed() == 4.0


def test_start_carries_seconds_and_resets(at):
    c = EpochClock()
    at(100)
    c.start(carried_s=7.5)
    at(102)
    assert c.elapsed() == 9.5
    c.pause()
    c.start()  # a new epoch: no pause or carried seconds survive
    at(105)
    assert c.elapsed() == 3.0
    c.reset()
    assert not c.running and c.elapsed() == 0.0


def test_pausing_a_stopped_clock_does_nothing(at):
    c = EpochClock()
    c.pause()
    c.resume()
    at(5)
    c.start()
    at(6)
    assert c.elapsed() == 1.0
