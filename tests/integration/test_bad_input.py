"""Bad input fails clearly, before work where it can, and leaves no finished-looking run."""

import pickle

import numpy as np
import pytest
import torch

from qtune.lightning.callback import PruningCallback
from qtune.pruning.sampler import shard_plan
from qtune.strategies import EpochPlan, PruningStrategy
from qtune.strategies.scores_file import load_scores
from qtune.train import run


def test_missing_checkpoint_names_the_key(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path="):
        run(make_cfg(["experiment=digits", f"ckpt_path={tmp_path / 'nope.ckpt'}"], "x"))
    assert not (tmp_path / "x").exists()


def test_corrupt_checkpoint_is_refused(make_cfg, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        run(make_cfg(["experiment=digits", "epochs=1", f"ckpt_path={bad}"], "y"))
    assert not (tmp_path / "y" / "summary.json").exists()


def test_empty_plan_is_an_error_naming_the_strategy():
    class Nothing(PruningStrategy):
        name = "nothing"

        def epoch_plan(self, ctx):
            return EpochPlan(torch.tensor([], dtype=torch.long))

    core = PruningCallback(Nothing(), num_samples=4).core
    with pytest.raises(ValueError, match="'nothing' returned an empty plan"):
        core.plan_epoch(0, max_epochs=1)


def test_dataset_smaller_than_world_size_repeats_samples():
    shards = [shard_plan(torch.tensor([7]), seed=0, epoch=0, rank=r, world_size=4) for r in range(4)]
    assert [s.tolist() for s in shards] == [[7]] * 4  # every rank still runs one step


def test_pickle_disguised_as_scores_file_is_refused(tmp_path):
    fake = tmp_path / "scores.npz"
    fake.write_bytes(pickle.dumps({"sample_id": np.arange(3), "el2n": np.ones(3)}))
    with pytest.raises(ValueError):
        load_scores(fake, 3, "el2n")
    obj = tmp_path / "obj.npz"
    np.savez(obj, sample_id=np.arange(3), el2n=np.array([{"x": 1}] * 3, dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_scores(obj, 3, "el2n")


def test_scores_file_for_another_dataset_is_refused(tmp_path):
    f = tmp_path / "s.npz"
    np.savez(f, sample_id=np.arange(5), el2n=np.ones(5))
    with pytest.raises(ValueError, match=str(f)):
        load_scores(f, 6, "el2n")


def test_a_non_finite_evaluation_stops_before_the_summary(make_cfg, monkeypatch):
    """A finished run resumed onto broken weights: the NaN evaluation is refused and the run's
    summary.json stays as it was."""
    import json
    import math
    from pathlib import Path

    import qtune.eval.evaluate as evaluate

    cfg = make_cfg(["experiment=digits", "epochs=1"], "done")
    first = run(cfg)
    summary = Path(cfg.run_dir) / "summary.json"
    before = summary.read_bytes()
    monkeypatch.setattr(evaluate, "validation_metrics", lambda trainer, bundle: {"loss": math.nan})
    resumed = make_cfg(["experiment=digits", "epochs=1", f"ckpt_path={cfg.run_dir}/checkpoints/last.ckpt"], "done")
    with pytest.raises(FloatingPointError, match=r"not finite \(eval.loss=nan\).*summary.json is not written"):
        run(resumed)
    assert summary.read_bytes() == before and json.loads(before)["eval"] == first["eval"]


def test_a_second_run_in_a_directory_in_use_is_refused_writing_nothing(make_cfg):
    from pathlib import Path

    from qtune.runs.lock import RunDirectoryLock

    cfg = make_cfg(["experiment=digits", "epochs=1"], "busy")
    with RunDirectoryLock(cfg.run_dir):
        with pytest.raises(RuntimeError, match="is in use by another run"):
            run(cfg)
    assert {p.name for p in Path(cfg.run_dir).iterdir()} == set()  # no log, checkpoint or summary
    assert run(cfg)["epochs"] == 1  # free again
