"""The packing keys of every ``data`` group, and the packing a train loader applies.

Each data group's declaration inherits :class:`PackingKeys`, so ``data.packing``,
``data.max_tokens_per_row`` and ``data.packing_policy`` are checked like any other key
(``qtune.config.schema``), and :func:`packing_from` turns them into the :class:`Packing` the
pruning callback's loader packs each epoch's plan with. With packing, ``batch_size`` counts
rows per batch (each row holds up to ``max_tokens_per_row`` tokens of whole samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from qtune.config.declared import knob
from qtune.data.packing import POLICIES


@dataclass
class PackingKeys:
    """Declared in each data group; packing is off by default (padded batches)."""

    packing: bool = False
    max_tokens_per_row: Optional[int] = knob(None, ge=1, doc="null: data.max_length, else the longest sample")
    packing_policy: Literal[POLICIES] = "refuse"  # a sample longer than a row: refused, or cut and counted


@dataclass(frozen=True)
class Packing:
    """How a loader packs: rows of at most ``max_tokens_per_row`` tokens (None: the longest
    training sample), ``policy`` for longer samples, ``pad_id`` after a row's last sample."""

    max_tokens_per_row: int | None = None
    policy: str = "refuse"
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"data.packing_policy={self.policy!r}; choose one of {POLICIES}")
        if self.max_tokens_per_row is not None and int(self.max_tokens_per_row) < 1:
            raise ValueError(f"data.max_tokens_per_row={self.max_tokens_per_row} must be at least 1")


def packing_from(data_cfg: Any, pad_id: int = 0) -> Packing | None:
    """The ``data`` group's packing (None when ``data.packing`` is off or absent). Rows hold
    ``max_tokens_per_row`` tokens, by default ``data.max_length`` (what one sample may reach),
    else (no length limit) the longest training sample."""
    get = data_cfg.get if hasattr(data_cfg, "get") else lambda k, d=None: getattr(data_cfg, k, d)
    if not get("packing", False):
        return None
    cap = get("max_tokens_per_row", None) or get("max_length", None)
    return Packing(None if cap is None else int(cap), str(get("packing_policy", "refuse")), int(pad_id))
