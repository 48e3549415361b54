"""``ckpt_path`` checks before any work: a corrupt checkpoint would otherwise fail as a bare
EOFError or KeyError after the model and data were built. Every error names the key (or the
file). The config keys themselves are checked by ``qtune.config.schema``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """The checkpoint at `path`, memory-mapped and weights only (tensors and plain values, no
    code runs); anything else is an error naming `key` and saying what the file is not."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        raise IsADirectoryError(
            f"{key}={path} is a directory; pass the checkpoint file, e.g. {p / 'checkpoints' / 'last.ckpt'}"
        )
    if not p.is_file():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint file")
    if not zipfile.is_zipfile(p):
        raise ValueError(
            f"{key}={path}: not a checkpoint (torch.save's zip format expected; "
            "the file is empty, truncated or something else)"
        )
    import torch

    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{key}={path}: refused: the file holds pickled Python objects, and "
            "loading those can run arbitrary code (a qtune checkpoint holds only "
            "tensors and plain values)"
        ) from None
    except Exception as exc:  # a damaged archive
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{key}={path}: unreadable checkpoint ({type(exc).__name__}: {first[:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ValueError(f"{key}={path}: not a Lightning checkpoint (no state_dict or global_step)")
    return ckpt
