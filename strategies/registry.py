"""Name → strategy class registry, filled by a decorator and by the ``qtune.strategies``
entry-point group, so a third-party package adds a strategy without touching qtune."""

from __future__ import annotations

import inspect
import typing
import warnings
from importlib.metadata import entry_points
from typing import Any

from .base import PruningStrategy
from .contract import check_contract

_REGISTRY: dict[str, type[PruningStrategy]] = {}
_ENTRY_POINTS_LOADED = False
ENTRY_POINT_GROUP = "qtune.strategies"


def class_registrar(registry: dict, base: type, check, kind: str):
    """A class decorator factory filling `registry` with subclasses of `base` whose
    declarations `check` accepts (at import, naming the class and attribute)."""

    def register(name: str):
        def wrap(cls):
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"{cls!r} is not a {base.__name__} subclass")
            check(cls)
            if name in registry and registry[name] is not cls:
                warnings.warn(f"{kind} {name!r} re-registered by {cls.__module__}.{cls.__qualname__}")
            cls.name = name
            registry[name] = cls
            return cls

        return wrap

    return register


def register_strategy(name: str):
    """Class decorator: ``@register_strategy("random")``. The class's contract declarations
    are checked here, so a bad one fails at import, naming the class and attribute."""
    return class_registrar(_REGISTRY, PruningStrategy, check_contract, "strategy")(name)


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break qtune
            warnings.warn(f"could not load strategy entry point {ep.name!r}: {exc}")
            continue
        if isinstance(obj, type) and issubclass(obj, PruningStrategy) and ep.name not in _REGISTRY:
            try:
                register_strategy(ep.name)(obj)
            except TypeError as exc:  # an invalid contract declaration: say which, skip it
                warnings.warn(f"strategy entry point {ep.name!r} not registered: {exc}")


def registered_names() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def get_strategy_class(name: str) -> type[PruningStrategy]:
    _load_entry_points()
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown strategy {name!r} (config key strategy.name); registered: " + ", ".join(registered_names())
        )
    return _REGISTRY[name]


def build_strategy(name: str, seed: int = 0, **params: Any) -> PruningStrategy:
    """Instantiate by name; unknown parameters are an error that lists the accepted ones."""
    cls = get_strategy_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "seed")]
    for old in sorted(set(params) & set(cls.renamed_options)):
        if params[old] is None:  # the yaml keeps the old key empty, so the CLI reaches this check
            params = {k: v for k, v in params.items() if k != old}
            continue
        new = cls.renamed_options[old]
        raise ValueError(
            f"strategy {name!r}: option {old!r} is now called {new!r} (config key strategy.{new}, not strategy.{old})"
        )
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"strategy {name!r} got unknown option(s) {unknown} (config keys strategy.<option>); accepted: {accepted}"
        )
    check_option_types(cls, name, params)
    strategy = cls(seed=seed, **params)
    check_contract(strategy)  # declarations an instance set from its options
    return strategy


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_option_types(cls: type, name: str, params: dict[str, Any]) -> None:
    """Options annotated bool, int, float or str (alone or `| None`) must have that type: from
    the command line `static=maybe` is a string, and a string is truthy."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: leave checking to the class
        return
    for key, value in params.items():
        hint = hints.get(key)
        args = set(typing.get_args(hint)) if typing.get_args(hint) else {hint}
        nullable = type(None) in args
        kinds = [t for t in args if t in _SCALARS]
        if len(kinds) != 1 or len(args - {type(None)}) != 1 or (value is None and nullable):
            continue
        want = kinds[0]
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ValueError(
                f"strategy.{key}={value!r} must be {_SCALARS[want]}"
                + (" or null" if nullable else "")
                + f" (strategy {name!r})"
            )
