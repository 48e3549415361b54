"""Kill a 2-process CPU run in the middle of training, resume it, compare with a run that was
never interrupted: the same plans, samples, tokens and final metrics."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.distributed

# InfoBatch: its plans depend on every rank's scores of the epoch before, so a rank whose
# half-epoch rows were lost at the resume would change the later plans
ARGS = [
    "experiment=digits",
    "epochs=3",
    "strategy=infobatch",
    "model.dropout=0.1",
    "trainer=ddp_cpu",
    "trainer.devices=2",
    "kernels.backend=torch",
    "trainer.enable_progress_bar=false",
    "checkpoint.every_n_train_steps=3",
]


def _cmd(run_dir, *extra):
    return [sys.executable, "-m", "qtune.train", *ARGS, f"hydra.run.dir={run_dir}", *extra]


def _env():
    return dict(os.environ, WANDB_MODE="offline")


def test_killed_ddp_run_resumes_to_the_same_result(tmp_path):
    a = tmp_path / "a"
    done = subprocess.run(_cmd(a), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = json.loads((a / "summary.json").read_text())

    b = tmp_path / "b"
    ckpt = b / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        _cmd(b), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    saves, last_mtime, deadline = 0, None, time.time() + 300
    while saves < 2 and time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and ckpt.stat().st_mtime_ns != last_mtime:
            last_mtime, saves = ckpt.stat().st_mtime_ns, saves + 1
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # a hard kill of both ranks
    proc.wait()
    assert saves >= 2 and not (b / "summary.json").exists()

    resumed = subprocess.run(
        _cmd(b, f"ckpt_path={ckpt}"), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = json.loads((b / "summary.json").read_text())
    for key in ("samples_trained", "tokens_trained", "realised_keep_ratio", "eval"):
        assert got[key] == expected[key], key
    assert [e["plan_hash"] for e in got["epochs_detail"]] == [e["plan_hash"] for e in expected["epochs_detail"]]
