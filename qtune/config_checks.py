"""Type and range checks of the run-level config keys and of ``ckpt_path``, before any work.

Hydra hands `batch_size=abc` through as a string and `epochs=1.5` as a float: unchecked, the
first fails deep inside int() without naming the key and the second silently trains one
epoch. A corrupt checkpoint would fail as a bare EOFError or KeyError after the model and data
were built. Every error here names the config key (or the file) and the value given.
"""

from __future__ import annotations

import inspect
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

_ABSENT = object()

# Trainer arguments qtune sets itself (a trainer.<key> for these would collide)
SET_BY_QTUNE = ("max_epochs", "callbacks", "logger", "default_root_dir", "use_distributed_sampler",
                "reload_dataloaders_every_n_epochs", "num_sanity_val_steps")


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_ABSENT)


def _parse(text: str, kind: type) -> Any:
    """A number written as a string (environment interpolations give strings), else the
    string itself, which the caller then refuses by name."""
    try:
        return kind(text.strip())
    except ValueError:
        return text


def _write_back(cfg: DictConfig, key: str, value: Any) -> None:
    """Replace a number given as a string by the number, so that every later reader of the
    config (Lightning, torch, the scheduler) gets a number, not a string."""
    if isinstance(value, str):
        return  # not a number: the caller refuses it by name
    with read_write(cfg), open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)


def require_int(cfg: DictConfig, key: str, minimum: int | None = None,
                optional: bool = False) -> None:
    """`key` must be an integer (not a bool, not 1.5, not 'abc'), at least `minimum`; with
    `optional`, null or an absent key is accepted too."""
    v = _value(cfg, key)
    if optional and (v is None or v is _ABSENT):
        return
    if isinstance(v, str):  # e.g. seed=${oc.env:SLURM_ARRAY_TASK_ID}: a string of digits
        v = _parse(v, int)
        _write_back(cfg, key, v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{key}={v!r} must be an integer" + ("" if not optional else " or null"))
    if minimum is not None and v < minimum:
        raise ValueError(f"{key}={v} must be at least {minimum}")


def require_number(cfg: DictConfig, key: str, low: float, high: float,
                   low_open: bool = False, high_open: bool = False) -> None:
    """`key` must be a real number in the interval [low, high] (open where said)."""
    v = _value(cfg, key)
    if v is _ABSENT:
        return
    if isinstance(v, str):
        v = _parse(v, float)
        _write_back(cfg, key, v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise ValueError(f"{key}={v!r} must be a number")
    if v < low or v > high or (low_open and v == low) or (high_open and v == high):
        span = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{key}={v} is out of range; expected a value in {span}")


def check_trainer_keys(trainer_cfg: DictConfig) -> None:
    import lightning as L

    accepted = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in trainer_cfg:
        if key in SET_BY_QTUNE:
            raise ValueError(f"trainer.{key} is set by qtune itself; remove it from the config")
        if key not in accepted:
            raise ValueError(f"trainer.{key} is not an argument of lightning.Trainer; accepted: "
                             f"{sorted(accepted - set(SET_BY_QTUNE))}")


def check_run_config(cfg: DictConfig) -> None:
    """Every run-level key with a type or range, named in the error."""
    for key in ("epochs", "batch_size", "eval_batch_size"):
        require_int(cfg, key, minimum=1)
    require_int(cfg, "seed")
    require_int(cfg, "num_workers", minimum=0)
    require_number(cfg, "optim.lr", 0.0, math.inf, low_open=True, high_open=True)
    require_number(cfg, "optim.weight_decay", 0.0, math.inf, high_open=True)
    betas = _value(cfg, "optim.betas")
    if betas is not _ABSENT:
        if not OmegaConf.is_list(betas) or len(betas) != 2:
            raise ValueError(f"optim.betas={betas!r} must be a list of two numbers in [0, 1)")
        for i in range(2):
            require_number(cfg, f"optim.betas.{i}", 0.0, 1.0, high_open=True)
    require_number(cfg, "scheduler.warmup", 0.0, 1.0, high_open=True)
    require_number(cfg, "scheduler.min_ratio", 0.0, 1.0)
    require_int(cfg, "data.max_length", minimum=1, optional=True)
    require_int(cfg, "eval.max_items", minimum=1, optional=True)
    require_int(cfg, "checkpoint.every_n_train_steps", minimum=0, optional=True)  # 0: off
    if _value(cfg, "data.name") == "jsonl" and _value(cfg, "data.eval_path") is None:
        require_number(cfg, "data.eval_fraction", 0.0, 1.0, low_open=True, high_open=True)
    if _value(cfg, "trainer") is not _ABSENT:
        check_trainer_keys(cfg.trainer)


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """The checkpoint at `path`, memory-mapped and weights only (tensors and plain values, no
    code runs); anything else is an error naming `key` and saying what the file is not."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        raise IsADirectoryError(f"{key}={path} is a directory; pass the checkpoint file, e.g. "
                                f"{p / 'checkpoints' / 'last.ckpt'}")
    if not p.is_file():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint file")
    if not zipfile.is_zipfile(p):
        raise ValueError(f"{key}={path}: not a checkpoint (torch.save's zip format expected; "
                         "the file is empty, truncated or something else)")
    import torch

    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{key}={path}: refused: the file holds pickled Python objects, and "
                         "loading those can run arbitrary code (a qtune checkpoint holds only "
                         "tensors and plain values)") from None
    except Exception as exc:  # a damaged archive
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{key}={path}: unreadable checkpoint ({type(exc).__name__}: "
                         f"{first[:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ValueError(f"{key}={path}: not a Lightning checkpoint (no state_dict or "
                         "global_step)")
    return ckpt
