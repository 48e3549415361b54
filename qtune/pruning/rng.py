"""Global RNG state capture/restore, so a resumed run draws the same dropout masks.

States are stored as tensors and plain Python values only, so checkpoints stay loadable with
``torch.load(weights_only=True)``. Under DDP each rank's state is packed into bytes and
gathered, because ranks that see batches of different shapes consume their generators
differently: restoring rank 0's state everywhere would change the other ranks' dropout."""

from __future__ import annotations

import random
import io
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pack_state(state: Any) -> torch.Tensor:
    """A state (tensors and plain values) as a uint8 tensor: torch's own format, weights-only
    loadable, and a single tensor that one collective can gather from every rank."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def unpack_state(packed: torch.Tensor) -> Any:
    return torch.load(io.BytesIO(packed.numpy().tobytes()), weights_only=True)
