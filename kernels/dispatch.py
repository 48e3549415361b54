"""The backend choice: which implementation computes the statistics, and the fallback chain.

The backend is chosen per call (`backend=`), else by a process-wide default that the training
code sets once from the config key `kernels.backend` via `set_default_backend`. "auto" means:
Triton on CUDA, `compiled` on CPU when a C++ compiler works, else the chunked `torch` backend
(with a single warning, because that path is several times slower than the compiled one).
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

BACKENDS = ("auto", "triton", "compiled", "torch", "reference")
_default = os.environ.get("QTUNE_KERNELS_BACKEND", "auto")
_warned: set[str] = set()
_broken: dict[str, set[str]] = {"cpu": set(), "cuda": set()}  # backends that failed under auto


def set_default_backend(name: str) -> None:
    """Backend used by calls that pass no backend (or "auto"); the `kernels.backend` hook."""
    global _default
    if name not in BACKENDS:
        raise ValueError(f"unknown kernels backend {name!r}; choose from {BACKENDS}")
    _default = name


def get_default_backend() -> str:
    return _default


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=None)
def get_impl(name: str):
    if name == "torch":
        from .torch_chunked import TorchChunked

        return TorchChunked()
    if name == "compiled":
        from .compiled import Compiled

        return Compiled()
    if name == "triton":
        from .triton_stats import TritonStats

        return TritonStats()
    raise ValueError(f"no implementation object for backend {name!r}")


@functools.lru_cache(maxsize=None)
def _cpu_compiler_ok() -> bool:
    from .compiled import compiler_works

    return compiler_works()


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Concrete backend name for a call on `device` ("auto" and None resolved)."""
    name = backend or "auto"
    if name == "auto":
        name = _default
    if name not in BACKENDS:
        raise ValueError(f"unknown kernels backend {name!r}; choose from {BACKENDS}")
    if name == "auto":
        if device.type == "cuda":
            name = "triton"
        elif device.type == "cpu" and _cpu_compiler_ok():
            name = "compiled"
        else:
            _warn_once(
                "auto",
                f"qtune.kernels: no compiled path for {device.type}; using the "
                "chunked 'torch' backend (slower). Install a C++ compiler for 'compiled'.",
            )
            name = "torch"
        while name in _broken.get(device.type, ()):
            name = _FALLBACK[name]
    if name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' needs a CUDA device (or TRITON_INTERPRET=1)")
    return name


def is_auto(backend: str | None) -> bool:
    return (backend or "auto") == "auto" and _default == "auto"


_FALLBACK = {"triton": "compiled", "compiled": "torch"}


def next_backend(name: str, device_type: str, err: Exception, fallback: bool) -> str:
    """The backend to try after `name` failed with `err`: under "auto" (`fallback`) the next
    simpler one, remembered for the rest of the process with one warning; otherwise re-raise.
    Running out of memory is never a reason to switch."""
    if not fallback or name not in _FALLBACK or isinstance(err, torch.OutOfMemoryError):
        raise err
    _warn_once(
        f"failed-{name}",
        f"qtune.kernels: backend {name!r} failed ({type(err).__name__}: {str(err)[:200]}); using {_FALLBACK[name]!r}",
    )
    _broken.setdefault(device_type, set()).add(name)
    return _FALLBACK[name]


def working_impl(impl, device_type: str, fallback: bool):
    """`impl`, or under "auto" the backend that replaced it after it failed in this process."""
    name = impl.name
    while fallback and name in _broken.get(device_type, ()):
        name = _FALLBACK[name]
    return impl if name == impl.name else get_impl(name)


def call_with_fallback(call, name: str, device_type: str, fallback: bool = False):
    """`call(impl)` with backend `name`'s implementation object.

    With `fallback` (the backend came from "auto"), a backend that fails to build or launch
    (no working compiler, a Triton/driver mismatch) is replaced once, with a warning, by the
    next simpler one (triton -> compiled -> torch) for the rest of the process.
    """
    while True:
        try:
            return call(get_impl(name))
        except Exception as err:
            name = next_backend(name, device_type, err, fallback)
