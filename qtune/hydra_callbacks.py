"""Hydra callbacks of ``qtune-train`` (listed under ``hydra.callbacks`` in ``conf/train.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write


class KeepFinishedRunConfig(Callback):
    """A command pointed at a directory that already holds a finished run is refused by the job
    (``refuse_finished_run``), but Hydra writes the job's ``.hydra/`` files before the job
    starts, which would replace the finished run's config with the refused command's (and
    change its report). So for such a directory Hydra is told not to write them. Hydra turns
    exceptions of callbacks into warnings, so the refusal itself stays in the job."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # run.dir may use ${hydra:...}
        run_dir = Path(str(config.hydra.run.dir))
        if (run_dir / "summary.json").exists() and not config.get("ckpt_path"):
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None
