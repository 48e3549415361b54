"""Checkpoint and state files checked before use: a damaged one would otherwise fail as a bare
EOFError or KeyError after the model and data were built, or, with bytes flipped inside a
tensor, load silently and train or evaluate garbage. Every error names the key (or the file).
The config keys themselves are checked by ``qtune.config.schema``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any


def load_state_file(path: str | Path, key: str, what: str = "checkpoint") -> Any:
    """The torch.save file at `path`, after its zip archive's CRC-32 of every entry is checked
    (a same-size corruption of a tensor's bytes is caught here), loaded memory-mapped and
    weights only (tensors and plain values, no code runs). Anything else is a ``ValueError``
    (or ``FileNotFoundError``) naming `key` and the file and saying what it is not."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        raise IsADirectoryError(
            f"{key}={path} is a directory; pass the {what} file, e.g. {p / 'checkpoints' / 'last.ckpt'}"
        )
    if not p.is_file():
        raise FileNotFoundError(f"{key}={path}: no such {what} file")
    if not zipfile.is_zipfile(p):
        raise ValueError(
            f"{key}={path}: not a {what} (torch.save's zip format expected; "
            "the file is empty, truncated or something else)"
        )
    try:
        with zipfile.ZipFile(p) as archive:
            bad = archive.testzip()
    except Exception as exc:  # any failure to read the archive's own structure
        raise ValueError(f"{key}={path}: damaged {what} ({type(exc).__name__}: {exc})") from None
    if bad is not None:
        raise ValueError(
            f"{key}={path}: damaged {what}: the entry {bad!r} fails its CRC-32 check (the file "
            "changed after it was written); use another checkpoint, e.g. an earlier one"
        )
    import torch

    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{key}={path}: refused: the file holds pickled Python objects, and "
            f"loading those can run arbitrary code (a qtune {what} holds only "
            "tensors and plain values)"
        ) from None
    except Exception as exc:  # a damaged archive
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{key}={path}: unreadable {what} ({type(exc).__name__}: {first[:200]})") from None


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """A Lightning checkpoint of a qtune run, verified (:func:`load_state_file`)."""
    ckpt = load_state_file(path, key)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ValueError(f"{key}={path}: not a Lightning checkpoint (no state_dict or global_step)")
    return ckpt
