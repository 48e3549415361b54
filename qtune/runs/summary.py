"""What a run trained on and what it cost, next to its evaluation (``summary.json``)."""

from __future__ import annotations

from typing import Any

from qtune.runs.flops import flops_estimate


def build_summary(
    *,
    strategy: str,
    seed: int,
    epochs: int,
    train_samples_total: int,
    totals: dict[str, float],
    num_params: int,
    wall_time_s: float,
    trainable_params: int | None = None,
    evaluation: dict[str, Any],
    history: list[dict],
    extra: dict | None = None,
    epochs_run: int | None = None,
) -> dict:
    """``epochs``: the run's nominal epochs (the matching full run's, under a budget);
    ``epochs_run``: the epochs it trained (more or fewer under a budget)."""
    samples = totals.get("samples_trained", 0.0)
    response = float(totals.get("response_tokens", 0.0))
    epochs_run = epochs if epochs_run is None else epochs_run
    return {
        "strategy": strategy,
        "seed": seed,
        "epochs": epochs,
        "epochs_run": epochs_run,
        "train_samples_total": train_samples_total,
        "samples_trained": int(samples),
        "tokens_trained": int(totals.get("tokens_trained", 0.0)),
        "response_tokens": int(response),
        # tokens trained per response token of the trained samples (1.0 without a token rule)
        "token_keep_ratio": float(totals.get("tokens_trained", 0.0)) / response if response else None,
        "forward_tokens_trained": int(totals.get("forward_tokens", 0.0)),
        "scoring_forward_tokens": int(totals.get("scoring_tokens", 0.0)),
        "num_params": num_params,
        "trainable_params": num_params if trainable_params is None else trainable_params,
        "flops_estimate": flops_estimate(
            num_params, totals.get("forward_tokens", 0.0), totals.get("scoring_tokens", 0.0), trainable_params
        ),
        "wall_time_s": wall_time_s,
        "train_time_s": totals.get("train_time_s", 0.0),
        "scoring_time_s": totals.get("scoring_time_s", 0.0),
        "realised_keep_ratio": samples / max(train_samples_total * epochs_run, 1),
        "eval": evaluation,
        "epochs_detail": history,
        **(extra or {}),
    }
