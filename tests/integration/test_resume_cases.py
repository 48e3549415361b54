"""Resume cases beyond a plain mid-epoch stop: between epochs, after an epoch's last batch but
before its end-of-epoch bookkeeping, a finished run, and runs resumed with other settings.

InfoBatch is the strategy here because its plans depend on the previous epoch's scores: an
epoch whose scores are lost or booked twice on resume changes every later plan.
"""

import os
import shutil
import signal

import pytest
from conftest import crash

from qtune.runs.checkpoint_file import load_checkpoint
from qtune.train import run

# 1437 digits samples, batch 64: InfoBatch trains all of epoch 0, 23 steps
INFOBATCH = ["experiment=digits", "epochs=3", "strategy=infobatch"]


GAP_S = 1e6  # what the fake clock jumps between a crash and its resume


@pytest.fixture
def fake_clock(monkeypatch):
    """The epoch clock reads a counter that ticks one second per reading; ``jump(s)`` moves it
    on by s, standing for the time between a crash and its resume."""
    from qtune.pruning import epoch_clock

    t = [0.0]

    def tick() -> float:
        t[0] += 1.0
        return t[0]

    monkeypatch.setattr(epoch_clock, "now", tick)
    return lambda s: t.__setitem__(0, t[0] + s)


def assert_same_run(a, b, resumed_after_a_gap: bool = False):
    for key in ("samples_trained", "tokens_trained", "realised_keep_ratio", "eval"):
        assert a[key] == b[key], key
    for field in ("epoch", "plan_hash", "samples_trained", "planned_samples"):
        assert [e[field] for e in a["epochs_detail"]] == [e[field] for e in b["epochs_detail"]], field
    if resumed_after_a_gap:  # epoch times are training time: the gap is in none of them
        assert all(0 < e["time_s"] < GAP_S for e in b["epochs_detail"])


def crash_then_resume(make_cfg, overrides, crash, name, jump=None):
    """The summary of the resumed run; `jump(s)` (``fake_clock``) puts a gap before the resume."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_cfg(overrides, name), extra_callbacks=[crash])
    ckpt = make_cfg(overrides, name).run_dir + "/checkpoints/last.ckpt"
    assert os.path.isfile(ckpt)
    if jump is not None:
        jump(GAP_S)
    return run(make_cfg(overrides + [f"ckpt_path={ckpt}"], name))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from conftest import FAST, compose

    root = tmp_path_factory.mktemp("full")
    summary = run(compose(FAST + INFOBATCH + [f"run_dir={root / 'a'}"]))
    return summary, root / "a"


def test_stopped_between_epochs_resumes_from_the_finished_epoch(make_cfg, uninterrupted):
    """No step checkpoints at all: last.ckpt is written at every epoch end."""
    assert_same_run(uninterrupted[0], crash_then_resume(make_cfg, INFOBATCH, crash(epoch_start=1), "b"))


def test_checkpoint_after_an_epochs_last_batch(make_cfg, uninterrupted, tmp_path, fake_clock):
    """qtune never saves on an epoch's last batch (the epoch-end save follows), but a user's
    own ModelCheckpoint may: Lightning then resumes at the next epoch without the epoch-end
    hooks, and the restored epoch is booked before the next one is planned."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    user = ModelCheckpoint(
        dirpath=str(tmp_path / "user"),
        every_n_train_steps=23,
        save_top_k=-1,
        filename="step_{step}",
        auto_insert_metric_name=False,
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_cfg(INFOBATCH, "c"), extra_callbacks=[user, crash(epoch_end=0)])
    (ckpt,) = (tmp_path / "user").glob("*.ckpt")
    fake_clock(GAP_S)
    resumed = run(make_cfg(INFOBATCH + [f"ckpt_path={ckpt}"], "c"))
    assert_same_run(uninterrupted[0], resumed, resumed_after_a_gap=True)


def test_no_step_save_on_an_epochs_last_batch(make_cfg, tmp_path, fake_clock):
    """SeTa's second epoch is shorter than its third: a step save on the second epoch's last
    batch, restored, made Lightning train only the third epoch's last batches. qtune's
    checkpoint skips that save; the epoch-end one follows at the same step."""
    from conftest import FAST, compose

    args = ["experiment=digits", "epochs=3", "strategy=seta"]
    whole = run(compose(FAST + args + [f"run_dir={tmp_path / 'whole'}"]))
    steps = [round(e["samples_trained"]) for e in whole["epochs_detail"]]
    per_epoch = [-(-n // 64) for n in steps]
    assert per_epoch[1] < per_epoch[2]  # the case that went wrong
    every = per_epoch[0] + per_epoch[1]  # would land on epoch 1's last batch
    resumed = crash_then_resume(
        make_cfg, args + [f"checkpoint.every_n_train_steps={every}"], crash(epoch_end=1), "s", jump=fake_clock
    )
    assert_same_run(whole, resumed, resumed_after_a_gap=True)


def test_resuming_a_finished_run_keeps_its_evaluation(make_cfg, uninterrupted, tmp_path):
    summary, run_dir = uninterrupted
    copy = tmp_path / "d"
    shutil.copytree(run_dir, copy)
    again = run(make_cfg(INFOBATCH + [f"ckpt_path={copy / 'checkpoints' / 'last.ckpt'}"], "d"))
    assert again["eval"] == summary["eval"] and again["samples_trained"] == summary["samples_trained"]
    import csv

    with open(copy / "metrics.csv", newline="") as fh:
        finals = [r for r in csv.DictReader(fh) if r.get("final/accuracy")]
    assert len(finals) == 1


def test_resuming_a_finished_run_plans_and_scores_nothing_more(make_cfg, tmp_path):
    """Lightning builds the train loader before it sees there is nothing left to train: a
    strategy that scores every epoch must not score (or plan) an epoch that never runs."""
    import numpy as np

    args = ["experiment=digits", "epochs=1", "strategy=qtuning", "strategy.level=epoch"]
    first = run(make_cfg(args, "f"))
    before = dict(np.load(tmp_path / "f" / "scores.npz"))
    again = run(make_cfg(args + [f"ckpt_path={tmp_path / 'f' / 'checkpoints' / 'last.ckpt'}"], "f"))
    for key in ("scoring_forward_tokens", "flops_estimate", "samples_trained"):
        assert again[key] == first[key], key
    after = dict(np.load(tmp_path / "f" / "scores.npz"))
    for key, values in before.items():
        np.testing.assert_array_equal(after[key], values, err_msg=key)


def test_a_library_callback_resumes_a_checkpoint_that_carries_a_strategy_config():
    """Checked settings are those both sides know: a PruningCallback built without
    `strategy_config` (library use) accepts a qtune-train checkpoint of the same strategy."""
    from qtune.lightning.callback import PruningCallback
    from qtune.strategies import build_strategy

    writer = PruningCallback(
        build_strategy("random", keep_ratio=0.5),
        seed=0,
        num_samples=8,
        strategy_config={"name": "random", "keep_ratio": 0.5},
    )
    reader = PruningCallback(build_strategy("random", keep_ratio=0.5), seed=0, num_samples=8)
    reader.load_state_dict(writer.state_dict())
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        PruningCallback(build_strategy("random", keep_ratio=0.5), seed=1, num_samples=8).load_state_dict(
            writer.state_dict()
        )


def test_resume_with_other_settings_is_refused(make_cfg):
    base = [
        "experiment=digits",
        "epochs=2",
        "strategy=random",
        "strategy.keep_ratio=0.7",
        "checkpoint.every_n_train_steps=5",
    ]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_cfg(base, "e"), extra_callbacks=[crash(step=10)])
    ckpt = f"ckpt_path={make_cfg(base, 'e').run_dir}/checkpoints/last.ckpt"
    with pytest.raises(ValueError, match=r"strategy.keep_ratio: 0.7 -> 0.5"):
        run(make_cfg(base + ["strategy.keep_ratio=0.5", ckpt], "e"))
    with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
        run(make_cfg(base + ["seed=1", ckpt], "e"))
    # another split of the data (the same size): the data's digests differ, each named
    with pytest.raises(ValueError, match=r"data.eval_digest: '\w+' -> '\w+'; data.train_digest: '\w+' -> '\w+'"):
        run(make_cfg(base + ["data.seed=7", ckpt], "e"))
    with pytest.raises(ValueError, match=r"batch size 64; this run uses 32 \(config key batch_size"):
        run(make_cfg(base + ["batch_size=32", ckpt], "e"))
    assert not os.path.exists(make_cfg(base, "e").run_dir + "/summary.json")


def test_summary_is_created_with_the_usual_file_mode(make_cfg, tmp_path):
    from qtune.runs.atomic import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "s.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o644


def test_progress_is_the_share_of_batches_or_of_the_budget():
    """(epoch + batches done / batches in the epoch) / epochs, capped at the epoch's end; under
    a budget the share spent, whatever the batches say."""
    from types import SimpleNamespace

    from qtune.pruning.schedule import training_progress

    assert training_progress(0, 12, 24, 2) == pytest.approx(0.25)
    assert training_progress(1, 24, 24, 2) == pytest.approx(1.0)
    assert training_progress(1, 30, 24, 2) == pytest.approx(1.0)  # padded repeats: capped
    assert training_progress(1, 3, float("inf"), 4) == pytest.approx(0.5)  # unknown length
    assert training_progress(3, 1, 24, 4, SimpleNamespace(progress=0.125)) == 0.125


def test_stopped_mid_epoch_times_the_epoch_from_its_checkpoint(make_cfg, uninterrupted, fake_clock):
    """The resumed epoch carries the seconds it had trained before the checkpoint and goes on
    from there: the time between the crash and the resume counts in no epoch."""
    resumed = crash_then_resume(
        make_cfg, INFOBATCH + ["checkpoint.every_n_train_steps=5"], crash(step=30), "m", jump=fake_clock
    )
    assert_same_run(uninterrupted[0], resumed, resumed_after_a_gap=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_mid_epoch_position_and_exits_128_plus_it(make_cfg, uninterrupted, sig):
    """What a preemption (SIGTERM) or Ctrl+C (SIGINT) does: the step in progress finishes,
    last.ckpt holds the mid-epoch position, the exit status is 128 + the signal, no summary is
    written; resuming gives the uninterrupted run."""
    import lightning as L

    class SendSignal(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 30:  # inside epoch 1 (23 steps per full epoch)
                os.kill(os.getpid(), sig)

    with pytest.raises(SystemExit) as stopped:
        run(make_cfg(INFOBATCH, "sig"), extra_callbacks=[SendSignal()])
    assert stopped.value.code == 128 + sig
    run_dir = make_cfg(INFOBATCH, "sig").run_dir
    assert not os.path.exists(f"{run_dir}/summary.json")
    ckpt = load_checkpoint(f"{run_dir}/checkpoints/last.ckpt")
    assert ckpt["global_step"] == 30
    assert ckpt["callbacks"]["PruningCallback"]["epoch_progress"]["batches_done"] == 30 - 23
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    resumed = run(make_cfg(INFOBATCH + [f"ckpt_path={run_dir}/checkpoints/last.ckpt"], "sig"))
    assert_same_run(uninterrupted[0], resumed)
