"""End-of-training evaluation: eval loss (and accuracy) from the last validation; for SFT data
with references, the generation eval; and lm-evaluation-harness tasks when asked for.

``evaluate_model`` is the part that needs only a model and the task: ``qtune-train`` calls it
after training (and before, with ``eval.before=true``), ``qtune-eval`` on a finished run's
``final/`` model or any model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SAMPLES = "eval_samples.jsonl"
LM_EVAL_RESULTS = "lm_eval_results.json"


def evaluate_model(model, bundle, eval_cfg, out_dir: str | Path | None, suffix: str = "") -> dict[str, Any]:
    """Generation metrics and harness results of ``model`` on ``bundle``; per-item samples and
    the harness's JSON go to ``out_dir`` (file names end in ``suffix``, e.g. ``_before``)."""
    out: dict[str, Any] = {}
    out_dir = Path(out_dir) if out_dir is not None else None

    def where(name: str) -> Path | None:
        if out_dir is None:
            return None
        stem, dot, ext = name.partition(".")
        return out_dir / f"{stem}{suffix}{dot}{ext}"

    if bundle.task == "sft" and bundle.generation is not None and eval_cfg.get("exact_match", True):
        from qtune.eval.generation import evaluate_generation

        result = evaluate_generation(
            model,
            bundle.tokenizer,
            bundle.generation,
            bundle.eos_id,
            bundle.pad_id,
            eval_cfg,
            where(SAMPLES) if eval_cfg.get("samples", True) else None,
        )
        per_group = result.pop("per_group", None)
        out.update(result)
        if per_group:
            out["per_group"] = per_group
            if bundle.info.get("train_skills") is not None:  # the embedded task: groups are skills
                out["exact_match_per_skill"] = {g: v["exact_match"] for g, v in per_group.items()}
    lm_cfg = eval_cfg.get("lm_eval")
    from qtune.eval.harness import run_lm_eval, task_names

    if task_names(lm_cfg):
        out["lm_eval"] = run_lm_eval(model, bundle.tokenizer, lm_cfg, where(LM_EVAL_RESULTS))
    return out


def validation_metrics(trainer, bundle) -> dict[str, float]:
    """Eval loss (and accuracy for classifiers) of the last validation run."""
    metrics = trainer.callback_metrics
    out: dict[str, Any] = {}
    if "eval/loss" in metrics:
        out["loss"] = float(metrics["eval/loss"])
    if bundle.task == "classify" and "eval/accuracy" in metrics:
        out["accuracy"] = float(metrics["eval/accuracy"])
    return out


def eval_delta(before: dict, after: dict) -> dict[str, float]:
    """After minus before, for every metric both have (harness metrics as ``task/metric``)."""
    from qtune.eval.metrics import flatten_eval

    a, b = flatten_eval(after), flatten_eval(before)
    return {k: a[k] - b[k] for k in sorted(a.keys() & b.keys())}
