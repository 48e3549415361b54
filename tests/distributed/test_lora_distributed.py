"""LoRA over two CPU processes (gloo): DDP with a frozen base trains, agrees and exports."""

import json
import os
import subprocess
import sys

import pytest
from tiny_hf import save_tiny_chat_llama

pytestmark = pytest.mark.distributed


def test_lora_trains_with_ddp_and_q_tuning(tmp_path):
    model_dir = save_tiny_chat_llama(tmp_path / "model")
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "qtune.train",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "kernels.backend=torch",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        "model=hf",
        f"model.path={model_dir}",
        "adapter=lora",
        "data.num_train=64",
        "data.num_eval=8",
        "batch_size=8",
        "epochs=2",
        "strategy=qtuning",
    ]
    res = subprocess.run(
        cmd, cwd=tmp_path, env=dict(os.environ, WANDB_MODE="offline"), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert all(e["world_size"] == 2 for e in s["epochs_detail"])
    assert 0 < s["trainable_params"] < s["num_params"]
    assert (run_dir / "final" / "model.safetensors").is_file()
