"""``qtune-train``: compose the config, validate it, train with the chosen strategy, write
``summary.json``. ``run(cfg)`` is the same job without Hydra's command line (tests, notebooks)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf


def validate(cfg: DictConfig):
    """Check the whole config before any work starts (``qtune.config.schema``); returns the
    strategy."""
    from qtune.config.schema import validate_config

    return validate_config(cfg)


def check_resumed_budget(cfg: DictConfig, ckpt: dict) -> int | None:
    """Refuse a resume with another budget than the checkpoint's; for a checkpoint whose
    budget is spent, the epochs it holds (so the resumed run trains nothing more)."""
    state = (ckpt.get("callbacks") or {}).get("ComputeBudget")
    saved = None if state is None else float(state["fraction"])
    wanted = cfg.get("budget")
    if saved != (None if wanted is None else float(wanted)):
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path} was written with budget={saved}; this run "
            f"asks for budget={wanted} (config key budget): resume with the same "
            "budget, or start a new run"
        )
    from qtune.pruning.budget import ComputeBudget

    if state is None or not ComputeBudget.state_exhausted(state):
        return None
    return len((ckpt["callbacks"].get("PruningCallback") or {}).get("history") or []) or None


def refuse_non_finite_evaluation(evaluation: dict, run_dir: Path, checkpoint: Path) -> None:
    """A NaN or infinite evaluation means the weights are broken: stop before summary.json (a
    finished run's stays as it was) rather than record it as a result."""
    import math

    from qtune.eval.metrics import flatten_eval

    bad = {k: v for k, v in flatten_eval(evaluation).items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            "the evaluation after training is not finite ("
            + ", ".join(f"eval.{k}={v}" for k, v in sorted(bad.items()))
            + f"): the model's weights hold NaN or inf. {run_dir / 'summary.json'} is not "
            f"written; the checkpoint is {checkpoint}"
        )


def refuse_finished_run(run_dir: Path, ckpt_path: str | None) -> None:
    if (run_dir / "summary.json").exists() and not ckpt_path:
        raise FileExistsError(
            f"{run_dir} already holds a finished run (summary.json); choose another "
            "hydra.run.dir, or pass ckpt_path=... to resume a run"
        )


def build_loggers(cfg: DictConfig, run_dir: Path, resume: tuple[int, bool] | None = None) -> list:
    from qtune.lightning.metrics_log import csv_logger

    loggers: list = [csv_logger(run_dir, resume)]
    if cfg.logger.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_MODE", cfg.logger.get("mode", "offline"))
        loggers.append(
            WandbLogger(
                save_dir=str(run_dir),
                project=cfg.logger.project,
                entity=cfg.logger.get("entity"),
                tags=list(cfg.logger.get("tags") or []),
                offline=cfg.logger.get("mode", "offline") == "offline",
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    elif cfg.logger.name != "csv":
        raise ValueError(f"unknown logger.name {cfg.logger.name!r}; expected csv or wandb")
    return loggers


def write_final_scores(path: Path, pruning) -> None:
    """The statistics store at the end of training, with each item's kind when the data has one:
    what reports plot (e.g. the error-uncertainty plane)."""
    import numpy as np

    from qtune.cli.score import write_scores

    state = pruning.store.state_dict()
    cols = {"sample_id": np.arange(pruning.store.num_samples)}
    for key in ("loss", "entropy", "el2n", "p_label", "margin", "accuracy", "num_tokens", "seen_epoch", "forgetting"):
        cols[key] = state[key].numpy()
    cols["ppl"] = np.exp(cols["loss"])
    cols["aum"] = pruning.store.aum.numpy()
    if pruning.items is not None:
        cols["kind"] = np.array(pruning.items.kind_names)[pruning.items.kind_code.cpu().numpy()]
    write_scores(path, cols)


def packing_summary(packing, history: list[dict]) -> dict[str, Any] | None:
    """The run's packing (None: padded batches): settings, and over all epochs the rows, the
    samples cut to the row length and the share of padding in the packed batches."""
    if packing is None:
        return None
    tokens = sum(e.get("packing_tokens", 0) for e in history)
    slots = sum(e.get("packing_slots", 0) for e in history)
    return {
        "max_tokens_per_row": history[-1].get("max_tokens_per_row") if history else packing.max_tokens_per_row,
        "policy": packing.policy,
        "rows": sum(e.get("packing_rows", 0) for e in history),
        "truncated_samples": sum(e.get("packing_truncated", 0) for e in history),
        "padding_share": 1 - tokens / slots if slots else 0.0,
    }


def evaluate_before(model, bundle, eval_cfg, run_dir: Path) -> dict[str, Any] | None:
    """The eval of the model as loaded (``eval.before=true``), on rank zero only; files end in
    ``_before``."""
    from lightning.pytorch.utilities import rank_zero_only

    from qtune.eval.evaluate import evaluate_model

    if rank_zero_only.rank != 0:
        return None
    return evaluate_model(model, bundle, eval_cfg, run_dir, suffix="_before")


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """The config ``qtune-train`` would build from ``overrides``, through Hydra's compose API
    (no command line, no output directory: give ``run_dir=...``)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="qtune.conf", version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


RUN_CONFIG = "config.yaml"


def write_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """``<run_dir>/config.yaml``: the resolved config of the run, which ``qtune-eval RUN_DIR``
    reads back (Hydra's ``.hydra/`` exists only for command-line runs)."""
    from qtune.runs.atomic import atomic_write_text

    atomic_write_text(run_dir / RUN_CONFIG, OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))


def run(cfg: DictConfig, extra_callbacks: list | None = None) -> dict[str, Any]:
    """The whole job; ``extra_callbacks`` are added to the Trainer's (library use, tests)."""
    t_start = time.perf_counter()
    strategy = validate(cfg)
    if cfg.task == "pretrain":
        from qtune.models.base_cache import load_or_build_base

        path = load_or_build_base(cfg.model)
        print(f"base model ready: {path}")
        return {"base_path": str(path)}
    from qtune.runs.lock import RunDirectoryLock

    run_dir = Path(cfg.run_dir)
    refuse_finished_run(run_dir, cfg.ckpt_path)
    with RunDirectoryLock(run_dir):
        return train(cfg, strategy, run_dir, t_start, extra_callbacks)


def train(cfg: DictConfig, strategy, run_dir: Path, t_start: float, extra_callbacks: list | None) -> dict[str, Any]:
    """Train, evaluate and write the run's files, holding its directory."""
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from qtune.config.build import build_task_and_model
    from qtune.config.reference import build_token_step
    from qtune.data.packing_config import packing_from
    from qtune.data.fingerprint import data_fingerprint
    from qtune.eval.evaluate import evaluate_model, validation_metrics
    from qtune.kernels import set_default_backend
    from qtune.lightning.callback import PruningCallback
    from qtune.lightning.checkpointing import LastCheckpoint
    from qtune.lightning.console import QTuneModelSummary, QTuneProgressBar, quiet_libraries
    from qtune.lightning.datamodule import QTuneDataModule
    from qtune.lightning.module import QTuneModule
    from qtune.lightning.signals import StopOnSignal
    from qtune.models.adapters import base_weights_digest, parameter_counts
    from qtune.pruning.budget import full_run_flops
    from qtune.runs.atomic import atomic_write_json
    from qtune.runs.summary import build_summary

    quiet_libraries()
    resume = None  # (global step, taken mid-epoch) of the checkpoint resumed from
    epochs_done_at_budget = None  # a budgeted run resumed after its budget ran out
    if cfg.ckpt_path:
        from qtune.runs.checkpoint_file import load_checkpoint

        ckpt = load_checkpoint(cfg.ckpt_path)
        progress = (ckpt.get("callbacks", {}).get("PruningCallback") or {}).get("epoch_progress")
        resume = (int(ckpt["global_step"]), bool(progress and progress.get("batches_done")))
        epochs_done_at_budget = check_resumed_budget(cfg, ckpt)
        del ckpt
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    set_default_backend(cfg.kernels.backend)
    bundle, model = build_task_and_model(cfg)
    if bundle.task != cfg.task:
        raise ValueError(f"task={cfg.task} but data={cfg.data.name} is a {bundle.task} task")
    num_params, trainable_params = parameter_counts(model)
    token_step = build_token_step(cfg, strategy, model, bundle, num_params)  # loads a reference
    budget = None
    if cfg.get("budget") is not None:
        from qtune.pruning.budget import build_budget

        budget = build_budget(
            float(cfg.budget),
            int(cfg.epochs),
            strategy,
            bundle.train,
            int(cfg.batch_size),
            num_params,
            trainable_params,
            prepaid_flops=token_step.file_flops if token_step is not None else 0.0,
        )
    pruning = PruningCallback(
        strategy,
        seed=int(cfg.seed),
        num_samples=len(bundle.train),
        item_meta=bundle.train_meta,
        export_dir=run_dir / "plans" if cfg.export_plan else None,
        strategy_config=OmegaConf.to_container(cfg.strategy, resolve=True),
        budget=budget,
        data_fingerprint=data_fingerprint(bundle),
    )
    pruning.core.reference_identity = token_step.identity() if token_step is not None else None
    module = QTuneModule(
        model,
        task=bundle.task,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        betas=tuple(cfg.optim.betas),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        fused_head=bool(cfg.model.get("fused_head", False)),
        response_only_head=bool(cfg.model.get("response_only_head", True)),
        pruning_strategy=strategy,
        token_step=token_step,
    )
    packing = packing_from(cfg.data, bundle.pad_id) if bundle.task == "sft" else None
    datamodule = QTuneDataModule(bundle, cfg.batch_size, cfg.eval_batch_size, cfg.num_workers, packing)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs.pop("max_epochs", None)  # epochs (and the budget) decide it below
    base_digest = base_weights_digest(model)
    callbacks = [
        pruning,
        *(extra_callbacks or []),
        LastCheckpoint(str(run_dir / "checkpoints"), cfg.checkpoint.every_n_train_steps),
        stop := StopOnSignal(str(run_dir / "checkpoints" / "last.ckpt")),
    ]
    max_epochs = int(cfg.epochs)
    if budget is not None:
        from qtune.lightning.budget import BudgetCallback
        from qtune.pruning.budget import UPPER_EPOCHS

        callbacks.insert(1, BudgetCallback(budget))
        max_epochs = epochs_done_at_budget or UPPER_EPOCHS  # the budget stops the run
    if trainer_kwargs.get("enable_progress_bar", True):
        callbacks.append(QTuneProgressBar(budget))
    if trainer_kwargs.get("enable_model_summary", True):
        from qtune.runs.flops import token_costs

        callbacks.append(QTuneModelSummary(*token_costs(num_params, trainable_params)))
    evaluation_before = None
    if cfg.eval.get("before") and not cfg.ckpt_path:
        evaluation_before = evaluate_before(model, bundle, cfg.eval, run_dir)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        logger=build_loggers(cfg, run_dir, resume),
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        **trainer_kwargs,
    )
    # weights_only: a checkpoint is tensors and plain values; nothing in it runs code
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    except SIGTERMException:
        print(
            f"[qtune] stopped by signal {stop.signum}: {run_dir / 'checkpoints' / 'last.ckpt'} holds "
            f"the run; resume with ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            file=sys.stderr,
        )
        raise SystemExit(stop.exit_code) from None
    last, final_step = run_dir / "checkpoints" / "last.ckpt", trainer.global_step
    if not pruning.history and last.is_file():
        # spawned ranks (ddp_spawn): the pruning state and the step count lived in the ranks;
        # the end-of-epoch checkpoint of the last epoch holds them
        from qtune.runs.checkpoint_file import load_checkpoint

        ckpt = load_checkpoint(last)
        pruning.load_state_dict(ckpt["callbacks"]["PruningCallback"])
        final_step = int(ckpt["global_step"])
    if "eval/loss" not in trainer.callback_metrics:  # a finished run resumed: nothing was fit
        trainer.validate(module, datamodule=datamodule, verbose=False)
    if trainer.is_global_zero:  # the model is saved before it is evaluated: a failing eval loses nothing
        from qtune.models.final_export import export_final

        write_run_config(cfg, run_dir)
        export_final(
            module.model, bundle.tokenizer, run_dir / "final", merge=bool((cfg.get("adapter") or {}).get("merge", True))
        )
    evaluation, eval_error = validation_metrics(trainer, bundle), None
    if trainer.is_global_zero:
        try:
            evaluation.update(evaluate_model(module.model, bundle, cfg.eval, run_dir))
        except Exception as exc:  # the summary is still written, with what failed
            eval_error = exc
    summary = build_summary(
        strategy=strategy.name,
        seed=int(cfg.seed),
        epochs=int(cfg.epochs),
        train_samples_total=len(bundle.train),
        totals=pruning.totals,
        num_params=num_params,
        trainable_params=trainable_params,
        wall_time_s=time.perf_counter() - t_start,
        evaluation=evaluation,
        history=pruning.history,
        epochs_run=len(pruning.history) or int(cfg.epochs),
        extra={
            "task": bundle.task,
            "data_info": bundle.info,
            "kernel_warmup_s": module.kernel_warmup_s,
            "token_rule": getattr(getattr(strategy, "token_rule", None), "name", None),
            **pruning.run_shares(len(pruning.history) or int(cfg.epochs)),
        },
    )
    if evaluation_before is not None:
        from qtune.eval.evaluate import eval_delta

        summary["eval_before"] = evaluation_before
        summary["eval_delta"] = eval_delta(evaluation_before, evaluation)
    if eval_error is not None:
        summary["eval_error"] = (
            f"the evaluation after training failed ({type(eval_error).__name__}: {eval_error}); "
            f"the trained model is in {run_dir / 'final'} and the checkpoint in {last}. Rerun "
            f"only the evaluation with: qtune-eval {run_dir}"
        )
    summary["base_weights_sha256"] = base_digest
    summary["data_fingerprint"] = pruning.core.data_fingerprint
    summary["budget"] = cfg.get("budget")
    if token_step is not None:  # the reference, and a loss file's cost in flops_estimate
        summary["reference"] = token_step.summary() or None
        summary["flops_estimate"] += token_step.file_flops
    summary["packing"] = packing_summary(packing, pruning.history)
    summary["flops_vs_full"] = summary["flops_estimate"] / full_run_flops(
        int(cfg.epochs), bundle.train, num_params, trainable_params
    )
    refuse_non_finite_evaluation(evaluation, run_dir, last)
    if trainer.is_global_zero:
        write_final_scores(run_dir / "scores.npz", pruning)
        atomic_write_json(run_dir / "summary.json", summary)
        from qtune.lightning.metrics_log import adopt_csv_header

        for logger in trainer.loggers:
            adopt_csv_header(logger)
            logger.log_metrics(
                {f"final/{k}": v for k, v in evaluation.items() if isinstance(v, (int, float))}, step=final_step
            )
            logger.save()
    if cfg.logger.name == "wandb":
        import wandb

        wandb.finish()
    if eval_error is not None:
        raise RuntimeError(summary["eval_error"]) from eval_error
    return summary


@hydra.main(version_base="1.3", config_path="pkg://qtune.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = run(cfg)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        from qtune.lightning.console import print_result

        print_result(summary, Path(cfg.run_dir))
    ev = summary.get("eval", {})
    return ev.get("exact_match", ev.get("accuracy"))


if __name__ == "__main__":
    main()
