"""Pruning strategies, one module each, found by name through the registry.

Every module of this package is imported here (``pkgutil``), and importing a module runs its
``@register_strategy`` decorators: adding a strategy is one module, one
``conf/strategy/<name>.yaml`` and its tests, with no import list to edit. Third-party
packages register through the ``qtune.strategies`` entry-point group instead (``registry``).
Token rules (``token_*`` modules, ``@register_token_rule``) are found the same way and compose
with any strategy (``token_base``).
"""

if __name__ != "qtune.strategies":  # found as the bare `strategies` from the repository root
    from qtune.bare_names import hand_over

    hand_over(__name__, __file__)
else:
    import importlib
    import pkgutil

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
    from .token_base import TokenDecision, TokenInputs, TokenNeeds, TokenRule
    from .token_registry import build_token_rule, get_token_rule_class, register_token_rule, token_rule_names

    for _mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{_mod.name}")
    del _mod

    __all__ = [
        "BatchPlan",
        "BatchStats",
        "EpochContext",
        "EpochPlan",
        "PruningStrategy",
        "TokenDecision",
        "TokenInputs",
        "TokenNeeds",
        "TokenRule",
        "build_strategy",
        "build_token_rule",
        "check_ratio",
        "epoch_generator",
        "get_strategy_class",
        "get_token_rule_class",
        "register_strategy",
        "register_token_rule",
        "registered_names",
        "token_rule_names",
    ]
