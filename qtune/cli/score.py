"""``qtune-score``: write per-sample scores of the training set to a plain file (NPZ or JSON),
for strategies that take scores from a file (``el2n``, ``ccs``: ``strategy.scores_file=...``).

Scores come from one no-grad pass through the same statistics path as training. With
``ckpt_path`` the model weights come from a qtune checkpoint, and the training dynamics that
its statistics store accumulated (AUM, forgetting counts) are written too.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from qtune.runs.atomic import replaced_file


def check_scores_path(path: str | Path) -> None:
    if Path(str(path)).suffix not in (".npz", ".json"):
        raise ValueError(f"out={path}: expected a .npz or .json file name")


def write_scores(path: str | Path, columns: dict[str, np.ndarray]) -> None:
    """Atomic write of equal-length columns as .npz or .json (never pickle)."""
    check_scores_path(path)
    with replaced_file(path) as tmp:
        if tmp.suffix == ".npz":
            np.savez(tmp, **columns)
        else:
            tmp.write_text(
                json.dumps(
                    {
                        k: [None if isinstance(x, float) and np.isnan(x) else x for x in v.tolist()]
                        for k, v in columns.items()
                    }
                )
            )


def score(cfg: DictConfig) -> dict[str, np.ndarray]:
    from qtune.runs.checkpoint_file import load_checkpoint
    from qtune.config.schema import ScoreConfig, validate_config
    from qtune.lightning.module import QTuneModule
    from qtune.config.build import build_task_and_model
    from qtune.kernels import set_default_backend

    if OmegaConf.select(cfg, "token_losses.out"):
        return score_token_losses_checked(cfg)
    check_scores_path(cfg.out)  # before hours of scoring
    validate_config(cfg, ScoreConfig, trainer=False)
    ckpt = load_checkpoint(cfg.ckpt_path) if cfg.ckpt_path else None
    set_default_backend(cfg.kernels.backend)
    bundle, model = build_task_and_model(cfg)
    module = QTuneModule(
        model,
        task=bundle.task,
        fused_head=bool(cfg.model.get("fused_head", False)),
        response_only_head=bool(cfg.model.get("response_only_head", True)),
    )
    store = None
    if ckpt is not None:
        # not strict: a checkpoint also holds metric states; but every model weight must load
        missing = [
            k for k in module.load_state_dict(ckpt["state_dict"], strict=False).missing_keys if k.startswith("model.")
        ]
        if missing:
            raise ValueError(
                f"ckpt_path={cfg.ckpt_path}: lacks {len(missing)} weights of this "
                f"model (e.g. {missing[0]}); was it written for another model?"
            )
        store = (ckpt.get("callbacks", {}).get("PruningCallback") or {}).get("store")
        if store is not None and int(store["num_samples"]) != len(bundle.train):
            raise ValueError(
                f"ckpt_path={cfg.ckpt_path}: its statistics store covers "
                f"{int(store['num_samples'])} samples, this dataset has "
                f"{len(bundle.train)}; was it written for other data?"
            )
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device).eval()
    loader = DataLoader(bundle.train, batch_size=int(cfg.eval_batch_size), shuffle=False, collate_fn=bundle.collate)
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        ids, scores, _ = module.score_batch(batch)
        for k, v in {"sample_id": ids, **scores}.items():
            parts.setdefault(k, []).append(v.detach().cpu())
    cols = {k: torch.cat(v).numpy() for k, v in parts.items()}
    cols["ppl"] = np.exp(cols["loss"])
    if store is not None:
        cols["aum"] = (store["aum_sum"] / store["aum_count"].clamp(min=1)).numpy()
        cols["forgetting"] = store["forgetting"].numpy()
    write_scores(cfg.out, cols)
    return cols


def score_token_losses_checked(cfg: DictConfig) -> dict:
    """``token_losses.out=DIR``: per-token losses (``qtune.cli.token_losses``); the reference
    is ``reference.source=self`` or ``path``."""
    from qtune.cli.token_losses import score_token_losses
    from qtune.config.declared import ConfigError
    from qtune.config.schema import ScoreConfig, validate_config

    with open_dict(cfg.strategy):  # the token rule that will read the file plays no part here
        cfg.strategy.pop("token", None)
    validate_config(cfg, ScoreConfig, trainer=False)
    if cfg.reference.source not in ("self", "path"):
        raise ConfigError(
            f"token_losses.out={cfg.token_losses.out} writes a reference's per-token losses: set "
            f"reference.source=self or reference.source=path reference.path=DIR (it is {cfg.reference.source})"
        )
    return score_token_losses(cfg)


@hydra.main(version_base="1.3", config_path="pkg://qtune.conf", config_name="score")
def main(cfg: DictConfig) -> None:
    cols = score(cfg)
    if OmegaConf.select(cfg, "token_losses.out"):
        print(f"wrote {cols['columns']} of {cols['num_samples']} samples to {cfg.token_losses.out}")
        return
    print(f"wrote {len(cols['sample_id'])} samples x {sorted(cols)} to {cfg.out}")


if __name__ == "__main__":
    main()
