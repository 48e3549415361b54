"""What a run trained on and what it cost, written atomically next to its evaluation.

FLOPs estimate (documented in the README), with P the number of model parameters, P_t the
trainable ones and a token any non-padding input position: a token forwarded with a gradient
costs 2·P forward + 2·P backward to the inputs + 2·P_t for the weight gradients, that is
4·P + 2·P_t (6·P in full fine-tuning; frozen weights, e.g. a LoRA base, get no weight
gradient); a token forwarded without one in scoring passes costs 2·P. Attention's sequence-
length term is ignored (small at the lengths qtune's tasks use).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def default_file_mode() -> int:
    """0o666 less the umask: what a plain open() would create (mkstemp makes files 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write JSON to a temp file in the same directory, then rename: never a half-written file."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def token_costs(num_params: int, trainable_params: int | None = None) -> tuple[float, float]:
    """(FLOPs per token forwarded with a gradient, per token forwarded without one). The
    backward pass costs 2·P for the input gradients plus 2·P_trainable for the weight
    gradients, so with frozen weights (LoRA) a gradient token costs 4·P + 2·P_trainable."""
    trainable = num_params if trainable_params is None else trainable_params
    return 4.0 * num_params + 2.0 * trainable, 2.0 * num_params


def flops_estimate(num_params: int, forward_tokens: float, scoring_tokens: float,
                   trainable_params: int | None = None) -> float:
    grad, forward = token_costs(num_params, trainable_params)
    return grad * forward_tokens + forward * scoring_tokens


def build_summary(*, strategy: str, seed: int, epochs: int, train_samples_total: int,
                  totals: dict[str, float], num_params: int, wall_time_s: float,
                  trainable_params: int | None = None,
                  evaluation: dict[str, Any], history: list[dict], extra: dict | None = None,
                  epochs_run: int | None = None) -> dict:
    """``epochs``: the run's nominal epochs (the matching full run's, under a budget);
    ``epochs_run``: the epochs it trained (more or fewer under a budget)."""
    samples = totals.get("samples_trained", 0.0)
    epochs_run = epochs if epochs_run is None else epochs_run
    return {
        "strategy": strategy,
        "seed": seed,
        "epochs": epochs,
        "epochs_run": epochs_run,
        "train_samples_total": train_samples_total,
        "samples_trained": int(samples),
        "tokens_trained": int(totals.get("tokens_trained", 0.0)),
        "forward_tokens_trained": int(totals.get("forward_tokens", 0.0)),
        "scoring_forward_tokens": int(totals.get("scoring_tokens", 0.0)),
        "num_params": num_params,
        "trainable_params": num_params if trainable_params is None else trainable_params,
        "flops_estimate": flops_estimate(num_params, totals.get("forward_tokens", 0.0),
                                         totals.get("scoring_tokens", 0.0), trainable_params),
        "wall_time_s": wall_time_s,
        "train_time_s": totals.get("train_time_s", 0.0),
        "scoring_time_s": totals.get("scoring_time_s", 0.0),
        "realised_keep_ratio": samples / max(train_samples_total * epochs_run, 1),
        "eval": evaluation,
        "epochs_detail": history,
        **(extra or {}),
    }
