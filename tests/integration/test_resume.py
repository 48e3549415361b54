"""A run stopped mid-epoch or at an epoch end and resumed equals the uninterrupted run."""

import pytest
from conftest import crash

from qtune.train import run

BASE = [
    "experiment=digits",
    "epochs=3",
    "strategy=random",
    "strategy.keep_ratio=0.7",
    "checkpoint.every_n_train_steps=5",
]


def _same(a, b):
    for key in ("samples_trained", "tokens_trained", "realised_keep_ratio", "eval"):
        assert a[key] == b[key], key
    assert [e["plan_hash"] for e in a["epochs_detail"]] == [e["plan_hash"] for e in b["epochs_detail"]]
    assert [e["samples_trained"] for e in a["epochs_detail"]] == [e["samples_trained"] for e in b["epochs_detail"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from conftest import FAST, compose

    return run(compose(FAST + BASE + [f"run_dir={tmp_path_factory.mktemp('a')}"]))


# 16 steps per epoch, a checkpoint every 5: resumed from step 20 (4 batches into epoch 1) and
# from step 30 (the checkpoint at the crash step itself); between-epoch cases: test_resume_cases
@pytest.mark.parametrize("crash_step", [22, 30])
def test_resume_reproduces_the_uninterrupted_run(make_cfg, tmp_path, uninterrupted, crash_step):
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_cfg(BASE, "b"), extra_callbacks=[crash(step=crash_step)])
    assert not (tmp_path / "b" / "summary.json").exists()  # a crashed run claims nothing
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    resumed = run(make_cfg(BASE + [f"ckpt_path={ckpt}"], "b"))
    _same(uninterrupted, resumed)


def test_resume_with_another_strategy_is_an_error(make_cfg, tmp_path):
    with pytest.raises(RuntimeError):
        run(make_cfg(BASE, "c"), extra_callbacks=[crash(step=10)])
    ckpt = tmp_path / "c" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="strategy 'random'.*this run uses 'full'"):
        run(make_cfg(["experiment=digits", "epochs=3", "strategy=full", f"ckpt_path={ckpt}"], "c"))
