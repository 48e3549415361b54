"""``qtune-eval``: the end-of-training evaluations without training.

* ``qtune-eval RUN_DIR [key=value ...]``: a finished run's ``final/`` model on the run's own
  data (its ``config.yaml``), with ``eval.*``, ``eval_batch_size`` or ``kernels.*`` overridden
  and nothing else (other data would be merged into the run's own results: for that, evaluate
  ``model=hf model.path=RUN_DIR/final`` in a directory of its own). Results go to
  ``RUN_DIR/eval.json`` (plus ``eval_samples.jsonl`` and ``lm_eval_results.json``) and into the
  ``eval`` section of its ``summary.json``, which completes a run whose evaluation failed.
* ``qtune-eval model=... [data=...] [key=value ...]``: any model qtune can load, as
  ``qtune-train`` would build it, before any fine-tuning; results in ``run_dir``
  (default ``outputs/evals/<time>``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

USAGE = "usage: qtune-eval [RUN_DIR] [key=value ...]"
EVAL_KEYS = ("eval.", "eval_batch_size", "kernels.")  # what may change for a finished run


def split_args(argv: Sequence[str]) -> tuple[Path | None, list[str]]:
    positional = [a for a in argv if "=" not in a]
    if len(positional) > 1 or any(a.startswith("-") for a in positional):
        raise SystemExit(USAGE)
    return (Path(positional[0]) if positional else None), [a for a in argv if "=" in a]


def run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """A finished run's resolved config with ``overrides`` (dotted keys) applied; the run must
    hold its ``final/`` model."""
    from qtune.train import RUN_CONFIG

    if not (run_dir / "final").is_dir():
        raise FileNotFoundError(
            f"{run_dir}: no final/ model to evaluate (qtune-train writes "
            f"{run_dir / 'final'} when training ends; pass a finished run's "
            "directory, or model=... to evaluate a model without a run)"
        )
    source = next((p for p in (run_dir / RUN_CONFIG, run_dir / ".hydra" / "config.yaml") if p.is_file()), None)
    if source is None:
        raise FileNotFoundError(
            f"{run_dir}: neither {RUN_CONFIG} nor .hydra/config.yaml; cannot tell which data the run trained on"
        )
    cfg = OmegaConf.load(source)
    changes = [o for o in overrides if not o.split("=", 1)[0].lstrip("+").startswith(EVAL_KEYS)]
    if changes:
        raise SystemExit(
            f"qtune-eval {run_dir}: {changes[0]} would change what the run was, and its recorded "
            "results are the run's own; only eval.*, eval_batch_size and kernels.* apply to a "
            "finished run. To evaluate its model on other data, give it a directory of its own: "
            f"qtune-eval model=hf model.path={run_dir / 'final'} data=... run_dir=..."
        )
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    cfg.run_dir = str(run_dir)
    return cfg


def fresh_config(overrides: list[str]) -> DictConfig:
    """The ``qtune-train`` config of ``overrides``, with a run directory of its own."""
    from qtune.config.schema import validate_config
    from qtune.train import compose_config

    if not any(o.startswith("run_dir=") for o in overrides):
        overrides = [*overrides, f"run_dir=outputs/evals/{time.strftime('%Y-%m-%d_%H-%M-%S')}"]
    cfg = compose_config(overrides)
    validate_config(cfg, trainer=False)
    return cfg


def load_final(final_dir: Path):
    """``(model, tokenizer)`` of a run's ``final/``: an HF model (a peft adapter on the base it
    names when the run kept the adapter alone) and its HF or character tokenizer."""
    from transformers import AutoModelForCausalLM

    from qtune.data.tokenizer import FILENAME, CharTokenizer
    from qtune.models.hf import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(final_dir)).eval()
    if (final_dir / FILENAME).is_file():
        tokenizer = CharTokenizer.load(str(final_dir))
    else:
        tokenizer = load_tokenizer(str(final_dir))
    return model, tokenizer


def evaluate(run_dir: Path | None, overrides: list[str]) -> dict[str, Any]:
    from qtune.eval.evaluate import evaluate_model
    from qtune.eval.harness import check_lm_eval
    from qtune.runs.atomic import atomic_write_json

    summary = None
    if run_dir is not None:
        cfg = run_config(run_dir, overrides)
        summary_path = run_dir / "summary.json"
        if summary_path.is_file():  # read first: a broken one stops before anything is written
            try:
                summary = json.loads(summary_path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{summary_path}: not valid JSON ({exc}); nothing was evaluated or written") from None
        from qtune.data.tokenizer import FILENAME
        from qtune.eval.harness import task_names

        if task_names(cfg.eval.get("lm_eval")) and (run_dir / "final" / FILENAME).is_file():
            raise ValueError(
                f"eval.lm_eval.tasks needs a Hugging Face tokenizer; {run_dir}/final "
                "holds qtune's character tokenizer (a model=tiny_llama run)"
            )
        check_lm_eval(OmegaConf.merge(cfg, {"model": {"name": "hf"}}))  # final/ is an HF model
        from qtune.config.build import build_task_with_tokenizer

        model, tokenizer = load_final(run_dir / "final")
        bundle = build_task_with_tokenizer(cfg, tokenizer)
        source = str(run_dir / "final")
    else:
        cfg = fresh_config(overrides)
        from qtune.config.build import build_task_and_model

        bundle, model = build_task_and_model(cfg)
        source = f"model={cfg.model.name}" + (f" model.path={cfg.model.path}" if cfg.model.get("path") else "")
    out_dir = Path(cfg.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = evaluate_model(model, bundle, cfg.eval, out_dir)
    atomic_write_json(
        out_dir / "eval.json", {"model": source, "eval": result, "config": OmegaConf.to_container(cfg.eval)}
    )
    if summary is not None:
        summary_path = out_dir / "summary.json"
        summary["eval"] = {**(summary.get("eval") or {}), **result}
        summary.pop("eval_error", None)
        atomic_write_json(summary_path, summary)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    run_dir, overrides = split_args(sys.argv[1:] if argv is None else argv)
    try:
        result = evaluate(run_dir, overrides)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"qtune-eval: {exc}") from None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
