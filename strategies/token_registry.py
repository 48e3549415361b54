"""Name → token-rule class registry, kept apart from the sample-strategy registry so a token
rule composes with any strategy (``strategy.token`` in the config, ``conf/strategy/token/``)."""

from __future__ import annotations

import inspect
from typing import Any

from .registry import check_option_types, class_registrar
from .token_base import KINDS, KL_DIRECTIONS, NORMALIZERS, SCOPES, TOKEN_RULE_STATISTICS, TokenRule

_TOKEN_RULES: dict[str, type[TokenRule]] = {}


def _fail(owner: str, attr: str, value: Any, expected: str) -> None:
    raise TypeError(f"{owner}.{attr}={value!r} is not a valid token-rule declaration: expected {expected}")


def check_token_contract(target: Any) -> None:
    """Raise a ``TypeError`` naming the class and attribute of the first invalid declaration
    (``target``: a class at registration, an instance after construction)."""
    cls = target if isinstance(target, type) else type(target)
    owner = f"{cls.__module__}.{cls.__qualname__}"
    stats = target.statistics
    if not isinstance(stats, (tuple, list)) or not all(s in TOKEN_RULE_STATISTICS for s in stats):
        _fail(owner, "statistics", stats, f"a tuple of names from {TOKEN_RULE_STATISTICS}")
    for attr, choices in (("kind", KINDS), ("scope", SCOPES), ("normalizer", NORMALIZERS)):
        if getattr(target, attr) not in choices:
            _fail(owner, attr, getattr(target, attr), f"one of {choices}")
    if target.reference_kl is not None and target.reference_kl not in KL_DIRECTIONS:
        _fail(owner, "reference_kl", target.reference_kl, f"None or one of {KL_DIRECTIONS}")
    if ("topk_entropy" in stats) != (target.top_k is not None):
        _fail(owner, "top_k", target.top_k, "an int K exactly when 'topk_entropy' is in statistics")
    params = inspect.signature(cls.__init__).parameters
    for key, kind in target.ratio_keys.items():
        if kind not in ("keep", "prune") or key not in params:
            _fail(owner, "ratio_keys", dict(target.ratio_keys), "option names of __init__ -> 'keep' | 'prune'")


def register_token_rule(name: str):
    """Class decorator: ``@register_token_rule("rho1")``; the declarations are checked here."""
    return class_registrar(_TOKEN_RULES, TokenRule, check_token_contract, "token rule")(name)


def token_rule_names() -> list[str]:
    return sorted(_TOKEN_RULES)


def get_token_rule_class(name: str) -> type[TokenRule]:
    if name not in _TOKEN_RULES:
        raise KeyError(
            f"unknown token rule {name!r} (config key strategy.token.name); registered: "
            + ", ".join(token_rule_names())
        )
    return _TOKEN_RULES[name]


def build_token_rule(name: str, seed: int = 0, **params: Any) -> TokenRule:
    """Instantiate by name; unknown or mistyped options are errors naming the config key."""
    cls = get_token_rule_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "seed")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"token rule {name!r} got unknown option(s) {unknown} (config keys strategy.token.<option>); "
            f"accepted: {accepted}"
        )
    try:
        check_option_types(cls, name, params)
    except ValueError as exc:  # its message names strategy.<key>: a token option lives one level down
        raise ValueError(str(exc).replace("strategy.", "strategy.token.", 1)) from None
    rule = cls(seed=seed, **params)
    check_token_contract(rule)
    return rule
