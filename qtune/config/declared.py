"""Declared, typed config sections and the one checker that reads the declarations.

A config group is declared as a dataclass: each field's annotation is its type (``int``,
``float``, ``bool``, ``str``, ``Optional[...]``, ``Literal[...]``, ``list[...]``, a nested
dataclass) and ``knob(default, ge=..., gt=..., le=..., lt=...)`` adds a range. ``check_section``
walks a composed OmegaConf node against its declaration: an unknown key (with the closest
declared name), a wrong type, a value out of range or a missing mandatory value (``???``) is a
``ConfigError`` naming the full key (``data.noise_fraction``). So a new key is validated by
declaring it, and nothing that reads the config later has to re-check it.

Hydra hands ``batch_size=abc`` through as a string and ``epochs=1.5`` as a float; numbers that
arrive as strings (``${oc.env:...}`` interpolations) are parsed and written back as numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write


class ConfigError(ValueError):
    """A config value qtune refuses; the message names the key."""


def knob(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
) -> Any:
    """A declared field with an optional range (ge/gt/le/lt apply to numbers and to each
    number of a list)."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, doc=doc).items() if v not in (None, "")}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def close_matches(word: str, choices) -> str:
    near = difflib.get_close_matches(str(word), [str(c) for c in choices], n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(near)}?)" if near else ""


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_describe(a) for a in inner) + (" or null" if len(inner) < len(args) else "")
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}" if args else "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _parse_number(value: str, kind: type) -> Any:
    try:
        return kind(value.strip())
    except ValueError:
        return value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (a string of digits becomes the number), else ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} must be {_describe(tp)}")
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise ConfigError(f"{key}={value!r} must be {_describe(tp)}{close_matches(value, args)}")
    if origin in (list, tuple):
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be {_describe(tp)}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}.{i}") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp in (int, float):
        if isinstance(value, str):
            value = _parse_number(value, tp)
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, bool) or not isinstance(value, tp) or (tp is float and math.isnan(value)):
            raise ConfigError(f"{key}={value!r} must be {_NAMES[tp]}")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r} must be a string")
    raise TypeError(f"config type {tp!r} of {key} is not supported by the checker")


def _is_int_type(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return tp is int or (bool(args) and all(_is_int_type(a) for a in args))


def _check_range(value: Any, meta: dict, key: str, tp: Any) -> None:
    """Integers read "must be at least 1"; real numbers give their interval, "[0.0, 1.0)"."""
    if isinstance(value, list):
        inner = (typing.get_args(tp) or (Any,))[0] if typing.get_origin(tp) in (list, tuple) else tp
        for i, v in enumerate(value):
            _check_range(v, meta, f"{key}.{i}", inner)
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    tests = {
        "ge": value >= meta.get("ge", -math.inf),
        "gt": value > meta.get("gt", -math.inf),
        "le": value <= meta.get("le", math.inf),
        "lt": value < meta.get("lt", math.inf),
    }
    bad = [op for op in ("ge", "gt", "le", "lt") if op in meta and not tests[op]]
    if not bad:
        return
    if _is_int_type(tp):
        words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
        raise ConfigError(f"{key}={value} must be {words[bad[0]]} {meta[bad[0]]}")
    lo = f"[{meta['ge']}" if "ge" in meta else f"({meta['gt']}" if "gt" in meta else "(-inf"
    hi = f"{meta['le']}]" if "le" in meta else f"{meta['lt']})" if "lt" in meta else "inf)"
    raise ConfigError(f"{key}={value} is out of range; expected a value in {lo}, {hi}")


def _write_back(node: DictConfig, name: str, value: Any) -> None:
    """Store a coerced number, so every later reader (Lightning, torch) gets a number."""
    with read_write(node), open_dict(node):
        node[name] = value


def check_section(node: Any, schema: type, prefix: str, *, allow_extra: tuple[str, ...] = ()) -> None:
    """Check ``node`` (the config group at ``prefix``) against the dataclass ``schema``."""
    if node is None:
        raise ConfigError(f"{prefix or 'the config'} is missing (expected {_describe(schema)})")
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{prefix}={node!r} must be a mapping")
    declared = {f.name: f for f in dataclasses.fields(schema)}
    for name in node:
        if name not in declared and name not in allow_extra:
            where = f"{prefix}.{name}" if prefix else name
            raise ConfigError(
                f"{where} is not a known key{close_matches(name, declared)}; known: {', '.join(sorted(declared))}"
            )
    hints = typing.get_type_hints(schema)
    for name, f in declared.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in node.keys():  # (`in node` is False for a ??? value too)
            continue  # absent keys take the default of the code that reads them
        if OmegaConf.is_missing(node, name):
            raise ConfigError(f"{key} is required (set {key}=...)")
        tp = hints[name]
        if tp is Any:
            continue  # declared but free-form (e.g. run_dir, which Hydra fills in)
        if dataclasses.is_dataclass(tp):
            check_section(node[name], tp, key)
            continue
        try:
            raw = node[name]
        except Exception as exc:  # an interpolation that cannot resolve
            raise ConfigError(
                f"{key}: cannot resolve its value ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            ) from None
        value = _coerce(raw, tp, key)
        _check_range(value, dict(f.metadata), key, tp)
        if isinstance(raw, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
            _write_back(node, name, value)
