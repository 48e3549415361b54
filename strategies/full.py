"""``full``: every sample, every epoch. The baseline every other strategy is measured against."""

from __future__ import annotations

from .base import PruningStrategy
from .registry import register_strategy


@register_strategy("full")
class FullData(PruningStrategy):
    """The base class's plan: every sample, weights of one, no batch plan."""

    ratio_keys = {}  # no ratio knob: a grid runs it once per seed
    full_data = True  # the compute reference of qtune-report
    statistics = ()
