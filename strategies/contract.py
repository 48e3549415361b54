"""What a strategy declares about itself, and the check that runs when it registers.

The engine, ``scripts/run_grid.py`` and ``qtune-report`` read these declarations instead of
probing a strategy or keeping per-strategy tables, so a new strategy needs no edit anywhere
else. The attributes live on :class:`~qtune.strategies.base.PruningStrategy` (with defaults);
this module holds their allowed values and :func:`check_contract`, which the registry runs on
every class it registers and ``build_strategy`` on every instance it builds (an instance may
set a declaration from its options, as Q-Tuning does).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

# With a batch plan: "separate" scores the micro-batch without gradients, then forwards and
# backwards the kept rows only (the compute saving); "reuse" forwards once with gradients and
# only masks the loss (one forward, no saving, the official Q-Tuning code's way).
SCORING = ("separate", "reuse")
# Which tokens ``BatchStats.sample_entropy`` averages: response tokens, or every attended one.
ENTROPY_SCOPES = ("response", "all")
# What the loss divides by: kept response tokens, or every attended position of the kept rows.
LOSS_DENOMINATORS = ("response", "all_attended")
# keep: the fraction kept (a grid keep ratio r sets it to r); prune: the fraction removed (the
# grid sets it to 1 - r); shift: a fraction that moves which samples are kept, not how many
# (EL2N offset, CCS beta): shown in reports beside the ratios, never set by the grid.
RATIO_KINDS = ("keep", "prune", "shift")
# Per-sample statistics a plan may read: score-store columns (epoch plans; ``BatchStats``
# carries loss, ppl and entropy as ``sample_<name>``) and per-token batch statistics.
SAMPLE_STATISTICS = ("loss", "ppl", "entropy", "el2n", "p_label", "margin", "accuracy", "aum", "forgetting")
TOKEN_STATISTICS = ("token_loss", "token_entropy")
STATISTICS = SAMPLE_STATISTICS + TOKEN_STATISTICS

_CHOICES = {"batch_scoring": SCORING, "entropy_scope": ENTROPY_SCOPES, "loss_denominator": LOSS_DENOMINATORS}


def _fail(owner: str, attr: str, value: Any, expected: str) -> None:
    raise TypeError(
        f"{owner}.{attr}={value!r} is not a valid strategy declaration: expected "
        f"{expected} (see qtune.strategies.base.PruningStrategy)"
    )


def _owner(target: Any) -> tuple[type, str]:
    cls = target if isinstance(target, type) else type(target)
    return cls, f"{cls.__module__}.{cls.__qualname__}"


def swept_keys(ratio_keys: Mapping[str, str]) -> list[str]:
    """The knobs a keep-ratio grid sets, in declaration order (keep and prune kinds)."""
    return [k for k, kind in ratio_keys.items() if kind in ("keep", "prune")]


def check_contract(target: Any) -> None:
    """Raise a ``TypeError`` naming the class and attribute of the first invalid declaration.

    ``target`` is a strategy class (at registration) or instance (after construction). A
    valid ``ratio_keys`` is frozen into a read-only mapping so subclasses cannot mutate a
    parent's declaration by accident.
    """
    cls, owner = _owner(target)
    if not isinstance(target.uses_batch_plan, bool):
        _fail(owner, "uses_batch_plan", target.uses_batch_plan, "True or False")
    for attr, choices in _CHOICES.items():
        if getattr(target, attr) not in choices:
            _fail(owner, attr, getattr(target, attr), f"one of {choices}")
    stats = target.statistics
    if not isinstance(stats, (tuple, list)) or not all(s in STATISTICS for s in stats):
        _fail(owner, "statistics", stats, f"a tuple of names from {STATISTICS}")
    keys = target.ratio_keys
    if not isinstance(keys, Mapping) or not all(isinstance(k, str) and kind in RATIO_KINDS for k, kind in keys.items()):
        _fail(owner, "ratio_keys", keys, f"a mapping of option name to one of {RATIO_KINDS}")
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    missing = [k for k in keys if k not in params and not takes_any]
    if missing:
        _fail(owner, "ratio_keys", dict(keys), f"option names of {cls.__qualname__}.__init__ ({missing} are not)")
    if isinstance(target, type) and not isinstance(keys, MappingProxyType):
        target.ratio_keys = MappingProxyType(dict(keys))
