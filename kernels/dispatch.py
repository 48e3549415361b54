"""`token_stats`: one entry point, several backends with identical numbers.

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

from .formula import StatsFunction
from .reference import TokenStats, token_stats_reference

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
            _warn_once("auto", f"qtune.kernels: no compiled path for {device.type}; using the "
                       "chunked 'torch' backend (slower). Install a C++ compiler for 'compiled'.")
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
    _warn_once(f"failed-{name}", f"qtune.kernels: backend {name!r} failed "
               f"({type(err).__name__}: {str(err)[:200]}); using {_FALLBACK[name]!r}")
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


def run_rows(z2, y2, valid2, name: str, fallback: bool = False):
    """The 7 row outputs of backend `name` on [N, V] logits (autograd-aware for the loss)."""
    return call_with_fallback(lambda impl: StatsFunction.apply(z2, y2, valid2, impl, fallback),
                              name, z2.device.type, fallback)


def check_labels(labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> None:
    """Fail on a supervised label outside [0, V). On CUDA this is a device-side assert (no host
    sync per step: the error surfaces at the next synchronisation); on CPU it raises here.
    Without it an out-of-range label silently reads another row's logit or out of bounds."""
    bad = valid & ((labels < 0) | (labels >= num_classes))
    torch._assert_async(~bad.any(), f"qtune.kernels: a label is outside [0, {num_classes}) "
                        "(the vocabulary / class count) and is not ignore_index")


def token_stats(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                backend: str | None = None) -> TokenStats:
    """Per-token loss, entropy, EL2N, p_label, correct and margin from logits [..., V].

    `labels` has the logits' leading shape (already shifted for causal LMs); outputs are fp32
    with that shape; ignored positions give 0 and valid=False. Only `loss` carries gradient.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    name = resolve_backend(backend, logits.device)
    if name == "reference" or labels.numel() == 0:
        return token_stats_reference(logits, labels, ignore_index)
    v = logits.shape[-1]
    z2 = logits.reshape(-1, v)
    if z2.stride(-1) != 1:
        z2 = z2.contiguous()
    lab = labels.reshape(-1)
    valid = lab != ignore_index
    check_labels(lab, valid, v)
    y = torch.where(valid, lab, torch.zeros_like(lab)).long()
    rows = run_rows(z2, y, valid, name, fallback=is_auto(backend))
    shape = labels.shape
    loss, ent, el2n, p_y, correct, margin, _ = (r.view(shape) for r in rows)
    return TokenStats(loss, ent, el2n, p_y, correct, margin, valid.view(shape))
