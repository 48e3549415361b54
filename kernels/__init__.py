"""Per-token statistics (loss, entropy, EL2N, label probability, top-1 correctness, margin)."""

from .reference import TokenStats, token_stats  # noqa: F401
