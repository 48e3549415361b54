"""lm-evaluation-harness on the model in memory (``eval.lm_eval.*``).

The harness's HF wrapper (``HFLM``) accepts a loaded model and tokenizer, so the trained model
is evaluated where it is, with no save and reload. qtune's own tasks (the embedded task's eval
split, :mod:`qtune.eval.lm_eval_tasks`) are always on the task path, so they run with no download;
``eval.lm_eval.include_path`` adds a folder of the user's own task YAMLs.

``check_lm_eval`` runs before any training: the harness installed, the include folder present,
every task name known to the task manager (with close matches), an HF tokenizer to evaluate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qtune.config.declared import ConfigError, close_matches

INSTALL = 'pip install "qtune[eval]"  (or: pip install "lm_eval[hf]")'
SHIPPED_TASKS = Path(__file__).parent / "lm_eval_tasks"


def task_names(lm_cfg: Any) -> list[str]:
    """``eval.lm_eval.tasks`` as a list (a comma-separated string is accepted too)."""
    tasks = (lm_cfg or {}).get("tasks") or []
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    return [str(t).strip() for t in tasks if str(t).strip()]


def _include_paths(lm_cfg: Any) -> list[str]:
    paths = [str(SHIPPED_TASKS)]
    user = (lm_cfg or {}).get("include_path")
    if user:
        folder = Path(str(user)).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"eval.lm_eval.include_path={user}: no such folder of task YAMLs")
        paths.append(str(folder))
    return paths


def task_manager(lm_cfg: Any, tasks: list[str] | None = None):
    """A TaskManager that knows qtune's tasks and the user's folder; the harness's own ~15k
    tasks are indexed only when a name is not found in those (indexing them takes seconds)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(f"eval.lm_eval.tasks is set but lm-evaluation-harness is not installed: {INSTALL}") from None
    paths = _include_paths(lm_cfg)
    local = TaskManager(verbosity="ERROR", include_path=paths, include_defaults=False)
    if tasks is not None and all(t in local.all_tasks for t in tasks):
        return local
    return TaskManager(verbosity="ERROR", include_path=paths)


def check_lm_eval(cfg: Any) -> None:
    """Named errors for a harness request that cannot run, before any work."""
    lm_cfg = (cfg.get("eval") or {}).get("lm_eval")
    tasks = task_names(lm_cfg)
    if not tasks:
        return
    if cfg.model.name != "hf":
        raise ConfigError(
            f"eval.lm_eval.tasks needs a Hugging Face model and tokenizer; "
            f"model={cfg.model.name} has neither (use model=hf model.path=DIR "
            "or model=smollm2_135m)"
        )
    manager = task_manager(lm_cfg, tasks)
    known = set(manager.all_tasks)
    for t in tasks:
        if t not in known:
            raise ConfigError(
                f"eval.lm_eval.tasks: unknown task {t!r}{close_matches(t, known)}; "
                f"qtune's own: {', '.join(sorted(qtune_task_names()))}"
            )


def qtune_task_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_TASKS.glob("*/*.yaml"))


def _flat_metrics(task_results: dict) -> dict[str, float]:
    """``{"exact_match,none": .5, "exact_match_stderr,none": .1, "alias": ...}`` →
    ``{"exact_match": .5, "exact_match_stderr": .1}`` (a filter other than none is kept as a
    suffix: ``exact_match_strict-match``)."""
    out = {}
    for key, value in task_results.items():
        if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, filt = key.split(",", 1)
        out[metric if filt == "none" else f"{metric}_{filt}"] = float(value)
    return out


def run_lm_eval(model, tokenizer, lm_cfg: Any, out_path: str | Path | None) -> dict[str, Any]:
    """Evaluate ``model`` on ``eval.lm_eval.tasks``; ``{task: {metric: value}}``. The harness's
    full result JSON goes to ``out_path``."""
    tasks = task_names(lm_cfg)
    if not tasks:
        return {}
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import handle_non_serializable

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: adapters stay active
    was_training = base.training
    base.eval()
    try:
        lm = HFLM(
            pretrained=base,
            tokenizer=tokenizer,
            batch_size=int(lm_cfg.get("batch_size") or 8),
            max_length=lm_cfg.get("max_length"),
        )
        limit = lm_cfg.get("limit")
        results = simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=lm_cfg.get("num_fewshot"),
            limit=(int(limit) if limit is not None and float(limit) >= 1 else limit),
            task_manager=task_manager(lm_cfg, tasks),
            log_samples=bool(lm_cfg.get("log_samples", False)),
            apply_chat_template=bool(lm_cfg.get("apply_chat_template", False)),
            random_seed=0,
            numpy_random_seed=1234,
            torch_random_seed=1234,
            fewshot_random_seed=1234,
        )
    finally:
        base.train(was_training)
    if out_path is not None:
        from qtune.runs.atomic import atomic_write_text

        atomic_write_text(out_path, json.dumps(results, indent=2, default=handle_non_serializable))
    return {task: _flat_metrics(res) for task, res in sorted(results["results"].items())}
