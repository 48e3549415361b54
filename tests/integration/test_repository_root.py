"""Commands started from the repository root, where `kernels/` and `strategies/` sit on sys.path.

transformers imports Hugging Face's `kernels` package whenever a model class loads; from the root
the bare name finds the repository's folder first unless that folder hands the name over
(qtune/bare_names.py). Every command here runs in a fresh interpreter with cwd = the root.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, tiny_sft_overrides

ROOT = REPO
TRAIN_FAST = ["kernels.backend=torch", "trainer.enable_progress_bar=false", "epochs=1"]


def _at_root(args: list[str], extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    env.update(extra_env or {})
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return _at_root([sys.executable, "-c", code], env or None)


def test_a_model_class_loads_beside_qtune_and_kernels_is_the_installed_package():
    pytest.importorskip("kernels", reason="this transformers does not need Hugging Face's kernels")
    code = """
import os, sys, transformers, qtune.hf, qtune.kernels, kernels
from transformers import LlamaConfig, LlamaForCausalLM
LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
                             num_hidden_layers=1, num_attention_heads=2))
print(kernels.__file__, qtune.kernels.__file__, hasattr(kernels, "get_kernel"), sep="\\n")
"""
    res = _python(code)
    assert res.returncode == 0, res.stderr[-3000:]
    bare, ours, hub_api = res.stdout.split()
    assert Path(bare).resolve() != ROOT / "kernels" / "__init__.py" and hub_api == "True"
    assert Path(ours).resolve() == ROOT / "kernels" / "__init__.py"


@pytest.mark.parametrize("name", ["kernels", "strategies"])
def test_the_bare_name_goes_to_another_package_of_that_name(tmp_path, name):
    """A stand-in package of the same name after the root on sys.path: the bare import gets it."""
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("MARK = 'installed'\nfrom . import sub\n")
    (tmp_path / name / "sub.py").write_text("VALUE = 7\n")
    res = _python(
        f"import {name}, qtune.{name} as q; print({name}.MARK, {name}.sub.VALUE, q.__file__)", PYTHONPATH=str(tmp_path)
    )
    assert res.returncode == 0, res.stderr[-3000:]
    mark, value, ours = res.stdout.split()
    assert (mark, value) == ("installed", "7")
    assert Path(ours).resolve() == ROOT / name / "__init__.py"


def test_a_bare_name_with_no_such_package_fails_as_a_missing_module():
    res = _python("""
try:
    import strategies
except ModuleNotFoundError as e:
    import sys
    print(e.name, 'strategies' in sys.modules, 'qtune.strategies' in str(e))
""")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["strategies", "False", "True"]


def test_python_m_pytest_collects_every_test_module():
    res = _at_root([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"])
    assert res.returncode == 0, res.stdout[-3000:]
    assert "error" not in res.stdout.lower().splitlines()[-1]


def test_python_m_qtune_train_runs_the_embedded_task(tmp_path):
    run_dir = tmp_path / "run"
    res = _at_root(
        [
            sys.executable,
            "-m",
            "qtune.train",
            *tiny_sft_overrides(tmp_path / "cache"),
            *TRAIN_FAST,
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["samples_trained"] == summary["train_samples_total"] == 120


@pytest.mark.distributed
def test_torchrun_two_ranks_run_the_embedded_task(tmp_path):
    run_dir = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    res = _at_root(
        [
            *torchrun,
            "-m",
            "qtune.train",
            "trainer=ddp_cpu",
            "trainer.devices=2",
            *tiny_sft_overrides(tmp_path / "cache"),
            *TRAIN_FAST,
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [e["world_size"] for e in summary["epochs_detail"]] == [2]
    assert summary["samples_trained"] == summary["train_samples_total"] == 120
