"""The ``trainer`` group: ``lightning.Trainer`` arguments, checked against Lightning itself
before any work, and ``trainer.max_epochs`` read as the run-level ``epochs``."""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from qtune.config.declared import ConfigError, close_matches

# Trainer arguments qtune sets itself (a trainer.<key> for these would collide)
SET_BY_QTUNE = {
    "callbacks": "add callbacks through qtune.train.run(cfg, extra_callbacks=[...])",
    "logger": "choose logger=csv or logger=wandb",
    "default_root_dir": "set run_dir",
    "use_distributed_sampler": "qtune shards each epoch's plan itself",
    "reload_dataloaders_every_n_epochs": "qtune builds a loader per epoch plan",
    "num_sanity_val_steps": "qtune runs no sanity validation",
}


EPOCHS_LINK = "${epochs}"  # conf/trainer/cpu.yaml: trainer.max_epochs follows epochs


def _epochs_given_on_command_line() -> Optional[str]:
    """The ``epochs=N`` override of this Hydra run, if any (``None`` outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "epochs":
            return value
    return None


def adopt_trainer_max_epochs(cfg: DictConfig) -> None:
    """``trainer.max_epochs=N``, as a Lightning user writes it, means ``epochs=N``: qtune's
    plans, schedule and budget count epochs with the run-level key, so the value moves there
    (and ``trainer.max_epochs`` links back to it). Both given with different values is refused."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig) or "max_epochs" not in trainer:
        return
    raw = OmegaConf.to_container(trainer, resolve=False)["max_epochs"]
    if raw == EPOCHS_LINK:
        return
    if isinstance(raw, str) and "${" in raw:
        raw = trainer.max_epochs  # an interpolation such as ${oc.env:EPOCHS}
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ConfigError(
            f"trainer.max_epochs={raw!r} must be an integer, at least 1 (it is the "
            "same as epochs=N; an endless run, -1 or null, is not supported)"
        )
    given = _epochs_given_on_command_line()
    if given is not None and str(given) != str(raw):
        raise ConfigError(
            f"trainer.max_epochs={raw} and epochs={given} disagree: give one of "
            "them (qtune counts epochs with the run-level key epochs=N)"
        )
    with open_dict(cfg), open_dict(trainer):
        cfg.epochs = raw
        trainer.max_epochs = EPOCHS_LINK


def check_trainer_keys(trainer_cfg: DictConfig) -> None:
    """Every ``trainer.<key>`` is a ``lightning.Trainer`` argument qtune does not set itself."""
    import inspect

    import lightning as L

    accepted = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"} - set(SET_BY_QTUNE)
    for key in trainer_cfg:
        if key in SET_BY_QTUNE:
            raise ConfigError(f"trainer.{key} is set by qtune itself; {SET_BY_QTUNE[key]} (remove it from the config)")
        if key not in accepted:
            raise ConfigError(
                f"trainer.{key} is not an argument of lightning.Trainer"
                f"{close_matches(key, accepted)}; accepted: {sorted(accepted)}"
            )


def try_trainer(trainer_cfg: DictConfig) -> None:
    """Build (and drop) a ``lightning.Trainer`` from ``trainer.*``: Lightning's own checks of
    the values (devices, precision, accelerator, strategy) then run before any work rather
    than after the base build. Building one launches no process and touches no file."""
    import logging

    import lightning as L

    kwargs = OmegaConf.to_container(trainer_cfg, resolve=True)
    kwargs.update(logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
    quiet = [
        logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
    ]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        L.Trainer(**kwargs)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        named = [f"trainer.{k}={trainer_cfg[k]}" for k in trainer_cfg if k.lower() in text.lower()]
        raise ConfigError(
            f"{', '.join(named) or 'trainer'}: lightning.Trainer refuses this ({type(exc).__name__}: {text})"
        ) from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
