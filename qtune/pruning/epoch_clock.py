"""The training time of the epoch in progress, kept by the pruning core for every integration.

An epoch's ``time_s`` is the time spent training it: validation inside the epoch is paused out,
and an epoch resumed from a mid-epoch checkpoint continues from the seconds it had trained
before (never from a clock started in another process). ``now`` is looked up at every reading,
so a test can replace it with a clock it advances by hand.
"""

from __future__ import annotations

import time


def now() -> float:
    return time.perf_counter()


class EpochClock:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._t0: float | None = None
        self._paused_s = 0.0
        self._pause_t0: float | None = None

    @property
    def running(self) -> bool:
        return self._t0 is not None

    def start(self, carried_s: float = 0.0) -> None:
        """Start the epoch's clock, `carried_s` seconds of it already trained (a resume)."""
        self.reset()
        self._t0 = now() - float(carried_s)

    def pause(self) -> None:
        if self._t0 is not None and self._pause_t0 is None:
            self._pause_t0 = now()

    def resume(self) -> None:
        if self._pause_t0 is not None:
            self._paused_s += now() - self._pause_t0
            self._pause_t0 = None

    def elapsed(self) -> float:
        """Seconds trained in this epoch so far (0 when the clock was never started)."""
        if self._t0 is None:
            return 0.0
        end = self._pause_t0 if self._pause_t0 is not None else now()
        return end - self._t0 - self._paused_s
