"""Hydra callbacks of ``qtune-train`` (listed under ``hydra.callbacks`` in ``conf/train.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write


def _protected(run_dir: Path, config: DictConfig) -> bool:
    """A finished run (the job refuses the command unless it resumes one) or a run in progress
    (the job refuses a second run in its directory)."""
    from qtune.runs.lock import held_by_another

    return ((run_dir / "summary.json").exists() and not config.get("ckpt_path")) or held_by_another(run_dir)


class KeepFinishedRunConfig(Callback):
    """A command pointed at a directory that already holds a finished run, or one that another
    run is using, is refused by the job (``refuse_finished_run``, ``RunDirectoryLock``), but
    Hydra writes the job's ``.hydra/`` files before the job
    starts, which would replace the finished run's config with the refused command's (and
    change its report). Hydra turns exceptions of callbacks into warnings, so the refusal
    itself stays in the job; here a single run is told not to write ``.hydra/``, and a
    multirun (whose jobs write theirs before any per-job hook) gets the finished jobs' files
    back after each job."""

    def __init__(self) -> None:
        self._saved: dict[Path, dict[str, bytes]] = {}

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # run.dir may use ${hydra:...}
        if _protected(Path(str(config.hydra.run.dir)), config):
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
        sweep = Path(str(config.hydra.sweep.dir))
        if not sweep.is_dir() or config.get("ckpt_path"):
            return
        from qtune.runs.lock import LOCK_NAME, held_by_another

        busy = [p.parent for p in sweep.glob(f"**/{LOCK_NAME}") if held_by_another(p.parent)]
        for run_dir in [s.parent for s in sweep.glob("**/summary.json")] + busy:
            hydra_dir = run_dir / ".hydra"
            files = hydra_dir.iterdir() if hydra_dir.is_dir() else []
            self._saved[run_dir.resolve()] = {f.name: f.read_bytes() for f in files if f.is_file()}

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        run_dir = Path(str(HydraConfig.get().runtime.output_dir)).resolve()
        if run_dir not in self._saved:
            return
        saved, hydra_dir = self._saved[run_dir], run_dir / ".hydra"
        for f in list(hydra_dir.iterdir()) if hydra_dir.is_dir() else []:
            if f.is_file() and f.name not in saved:  # written by the refused job
                f.unlink()
        for name, data in saved.items():
            (hydra_dir / name).write_bytes(data)
        if not saved and hydra_dir.is_dir() and not any(hydra_dir.iterdir()):
            hydra_dir.rmdir()
