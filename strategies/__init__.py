"""Pruning strategies, one module each, found by name through the registry."""

from .base import (
    BatchPlan,
    BatchStats,
    EpochContext,
    EpochPlan,
    PruningStrategy,
    check_ratio,
    epoch_generator,
)
from .registry import build_strategy, get_strategy_class, register_strategy, registered_names

# Importing a module registers its strategy.
from . import ccs, denoise, el2n, full, infobatch, qtuning, random, rs2, seta  # noqa: E402,F401

__all__ = [
    "BatchPlan",
    "BatchStats",
    "EpochContext",
    "EpochPlan",
    "PruningStrategy",
    "build_strategy",
    "check_ratio",
    "epoch_generator",
    "get_strategy_class",
    "register_strategy",
    "registered_names",
]
