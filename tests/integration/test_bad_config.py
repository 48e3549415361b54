"""Bad values and files, refused before any work with the config key or file named; and what a
refused or resumed command leaves of an existing run."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from qtune.runs.checkpoint_file import load_checkpoint
from qtune.train import run, validate

DIGITS = ["experiment=digits", "epochs=1"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("batch_size=abc", r"batch_size='abc' must be an integer"),
        ("epochs=1.5", r"epochs=1.5 must be an integer"),
        ("batch_size=true", r"batch_size=True must be an integer"),
        ("seed=abc", r"seed='abc' must be an integer"),
        ("num_workers=-1", r"num_workers=-1 must be at least 0"),
        ("optim.lr=abc", r"optim.lr='abc' must be a number"),
        ("optim.lr=-1", r"optim.lr=-1 is out of range"),
        ("optim.betas=[2,3]", r"optim.betas.0=2 is out of range"),
        ("scheduler.warmup=2", r"scheduler.warmup=2 is out of range; expected a value in \[0.0, 1.0\)"),
        ("scheduler.min_ratio=5", r"scheduler.min_ratio=5 is out of range"),
        ("eval.max_items=-1", r"eval.max_items=-1 must be at least 1"),
        ("+trainer.bogus_key=3", r"trainer.bogus_key is not an argument of lightning.Trainer"),
        ("trainer.max_epochs=0", r"trainer.max_epochs=0 must be an integer, at least 1 \(it is the same as epochs=N"),
        ("trainer.max_epochs=null", r"trainer.max_epochs=None must be an integer, .*endless run"),
        ("+trainer.callbacks=[]", r"trainer.callbacks is set by qtune itself"),
        ("strategy=random strategy.keep_ratio=true", r"strategy.keep_ratio=True must be a number"),
        ("strategy=random", None),  # the control: a good config passes
    ],
)
def test_config_values_are_checked_before_any_work(make_cfg, override, message):
    cfg = make_cfg(DIGITS + override.split())
    if message is None:
        validate(cfg)
        return
    with pytest.raises(ValueError, match=message):
        validate(cfg)


def test_trainer_max_epochs_is_the_same_as_epochs(make_cfg, monkeypatch):
    """What a Lightning user types works: the value becomes the run-level epochs (which plans,
    schedule and budget read) and the trainer key links back to it."""
    cfg = make_cfg(DIGITS + ["trainer.max_epochs=4"])
    validate(cfg)
    assert cfg.epochs == 4 and cfg.trainer.max_epochs == 4
    monkeypatch.setenv("QTUNE_TEST_EPOCHS", "5")
    cfg = make_cfg(DIGITS + ["trainer.max_epochs=${oc.env:QTUNE_TEST_EPOCHS}"])
    validate(cfg)
    assert cfg.epochs == 5
    cfg = make_cfg(["experiment=digits", "epochs=2"])  # the default link: epochs decides
    validate(cfg)
    assert cfg.trainer.max_epochs == 2


def test_numbers_from_environment_interpolations_are_accepted(make_cfg, monkeypatch):
    """`seed=${oc.env:SLURM_ARRAY_TASK_ID}` gives a string of digits: a number, not an error;
    `checkpoint.every_n_train_steps=0` means off; `data.max_length=null` means no cut."""
    monkeypatch.setenv("QTUNE_TEST_SEED", "3")
    monkeypatch.setenv("QTUNE_TEST_WARMUP", "0.1")
    validate(make_cfg(DIGITS + ["seed=${oc.env:QTUNE_TEST_SEED}", "checkpoint.every_n_train_steps=0"]))
    cfg = make_cfg(
        DIGITS
        + ["checkpoint.every_n_train_steps=${oc.env:QTUNE_TEST_SEED}", "scheduler.warmup=${oc.env:QTUNE_TEST_WARMUP}"]
    )
    validate(cfg)  # and every later reader gets the numbers
    assert cfg.checkpoint.every_n_train_steps == 3 and cfg.scheduler.warmup == 0.1
    from qtune.data.embedded import build_embedded_task

    assert len(build_embedded_task({"max_length": None, "num_train": 50, "num_eval": 10}).train)


def test_data_keys_are_checked(make_cfg):
    with pytest.raises(ValueError, match=r"data.max_length=0 must be at least 1"):
        validate(make_cfg(["data.max_length=0"]))
    with pytest.raises(ValueError, match=r"data.eval_fraction='abc' must be a number"):
        validate(make_cfg(["data=jsonl", "data.path=x.jsonl", "data.eval_fraction=abc"]))


def test_strategy_options_keep_their_types(make_cfg):
    with pytest.raises(ValueError, match=r"strategy.static='maybe' must be true or false"):
        validate(make_cfg(DIGITS + ["strategy=random", "strategy.static=maybe"]))
    with pytest.raises(ValueError, match=r"strategy.warmup_epochs=1.5 must be an integer"):
        validate(make_cfg(DIGITS + ["strategy=el2n", "strategy.warmup_epochs=1.5"]))


def _lightning_like(path, payload):
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "kind,message",
    [
        ("empty", "not a checkpoint"),
        ("text", "not a checkpoint"),
        ("plain_pickle", "not a checkpoint"),
        ("truncated", "not a checkpoint|unreadable checkpoint"),
        ("flipped_tensor_bytes", "damaged checkpoint: the entry .* fails its CRC-32 check"),
        ("pickled_object", "refused: the file holds pickled Python objects"),
        ("plain_dict", "not a Lightning checkpoint"),
        ("directory", "is a directory"),
    ],
)
def test_bad_checkpoints_name_ckpt_path(tmp_path, kind, message):
    p = tmp_path / "x.ckpt"
    good = _lightning_like(tmp_path / "good.ckpt", {"state_dict": {"w": torch.ones(1000)}, "global_step": 3})
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("hello")
    elif kind == "plain_pickle":
        p.write_bytes(pickle.dumps({"state_dict": {}}))
    elif kind == "truncated":
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "flipped_tensor_bytes":  # same size, still a valid zip: only the CRCs tell
        data = bytearray(good.read_bytes())
        start = data.index(torch.ones(1000).numpy().tobytes()[:64])  # inside the tensor's bytes
        data[start + 100 : start + 108] = bytes(8)
        p.write_bytes(bytes(data))
        assert zipfile.is_zipfile(p) and p.stat().st_size == good.stat().st_size
    elif kind == "pickled_object":
        torch.save({"state_dict": {}, "global_step": 0, "x": zipfile.ZipInfo("a")}, p)
    elif kind == "plain_dict":
        torch.save({"weights": torch.ones(2)}, p)
    else:
        p = tmp_path
    with pytest.raises((ValueError, IsADirectoryError), match=message) as err:
        load_checkpoint(p)
    assert "ckpt_path=" in str(err.value)
    assert load_checkpoint(good)["global_step"] == 3


def test_scores_files_that_are_not_scores_name_the_file(tmp_path):
    from qtune.strategies.scores_file import load_scores

    cases = {
        "broken.json": ('{"sample_id": [0, 1] "el2n"', "JSONDecodeError"),
        "list.json": ("[1, 2, 3]", "a JSON object of arrays or a list of records"),
        "strings.json": ('{"sample_id": [0, 1], "el2n": ["x", "y"]}', "not numbers"),
        "empty.npz": ("", "not an NPZ archive"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message) as err:
            load_scores(tmp_path / name, 2, "el2n")
        assert name in str(err.value)
    np.savez(tmp_path / "nan.npz", sample_id=np.arange(2), el2n=np.full(2, np.nan))
    with pytest.raises(ValueError, match="no finite value"):
        load_scores(tmp_path / "nan.npz", 2, "el2n")
    np.savez(tmp_path / "strings.npz", sample_id=np.arange(2), el2n=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"strings.npz: column 'el2n' holds <U1 values, not numbers"):
        load_scores(tmp_path / "strings.npz", 2, "el2n")
    np.savez(tmp_path / "inf.npz", sample_id=np.arange(3), el2n=np.array([0.5, np.inf, -np.inf]))
    with pytest.raises(ValueError, match=r"inf.npz: column 'el2n' has 2 infinite value\(s\)"):
        load_scores(tmp_path / "inf.npz", 3, "el2n")
    np.savez(tmp_path / "some_nan.npz", sample_id=np.arange(2), el2n=np.array([0.5, np.nan]))
    assert load_scores(tmp_path / "some_nan.npz", 2, "el2n")[1].isnan()  # NaN: no score, allowed


def test_jsonl_with_a_lone_surrogate_names_file_line_and_field(tmp_path):
    from qtune.data.jsonl import DataError, read_jsonl

    f = tmp_path / "d.jsonl"
    f.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "x \\ud800 y", "output": "z"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'instruction' is not valid Unicode"):
        read_jsonl(f)


def test_model_and_data_mismatches_are_named(make_cfg, tmp_path):
    from qtune.config.build import build_task_and_model

    with pytest.raises(ValueError, match="data=jsonl needs a model with a real tokenizer"):
        build_task_and_model(make_cfg(["data=jsonl", f"data.path={tmp_path / 'x.jsonl'}"]))
    with pytest.raises(FileNotFoundError, match="model.path=/nonexistent/model: no such directory"):
        build_task_and_model(
            make_cfg(["model=hf", "model.path=/nonexistent/model", "data=jsonl", f"data.path={tmp_path / 'x.jsonl'}"])
        )
    with pytest.raises(
        ValueError,
        match=r"data.max_length=10 cuts the responses .* "
        r"set data.max_length>=",
    ):
        build_task_and_model(make_cfg(["data.max_length=10"]))


def test_context_longer_than_learned_positions_is_refused(make_cfg, tmp_path):
    """GPT-2 style (a learned position table) is refused up front; a rotary Llama with the
    same nominal limit is not (it has no table to run past)."""
    from tiny_hf import save_tiny_llama, save_tiny_tokenizer
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from qtune.config.build import build_task_and_model

    gpt2 = save_tiny_tokenizer(tmp_path / "gpt2", chat_template=False)
    GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(AutoTokenizer.from_pretrained(str(gpt2))), n_positions=64, n_embd=16, n_layer=1, n_head=2
        )
    ).save_pretrained(str(gpt2))
    llama = save_tiny_llama(tmp_path / "llama")  # max_position_embeddings=128, rotary
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"instruction": "word " * 40, "output": "x " * 40}) + "\n" for _ in range(4)))

    def cfg(model_dir, *extra):
        return make_cfg(["model=hf", f"model.path={model_dir}", "data=jsonl", f"data.path={data}", *extra])

    with pytest.raises(
        ValueError,
        match=r"exceeds the model's 64 learned positions .* "
        r"data.max_length<=64",
    ):
        build_task_and_model(cfg(gpt2))
    build_task_and_model(cfg(gpt2, "data.max_length=64"))
    build_task_and_model(cfg(llama))


def test_score_refuses_a_checkpoint_for_another_model_and_a_bad_out_name(tmp_path):
    from conftest import FAST, compose

    from qtune.cli.score import score

    ckpt = _lightning_like(tmp_path / "other.ckpt", {"state_dict": {"model.other": torch.ones(2)}, "global_step": 0})
    cfg = compose(FAST + ["experiment=digits", f"ckpt_path={ckpt}", f"out={tmp_path / 's.npz'}"], config_name="score")
    with pytest.raises(ValueError, match="lacks .* weights of this model"):
        score(cfg)
    cfg = compose(FAST + ["experiment=digits", f"out={tmp_path / 's.txt'}"], config_name="score")
    with pytest.raises(ValueError, match=r"out=.*s.txt: expected a .npz or .json file name"):
        score(cfg)
    assert not list(tmp_path.glob("s.*"))


def test_report_names_a_corrupt_summary_and_writes_nothing(tmp_path):
    from qtune.cli.report import build_report

    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text('{"epochs": 3, "eval": {"accu')
    with pytest.raises(ValueError, match=r"r1/summary.json: not valid JSON"):
        build_report([tmp_path / "runs"], tmp_path / "out")
    for text, problem in [
        ("[1, 2]", "a JSON object expected, got list"),
        ("{}", "no 'strategy' name"),  # was counted as a full run of 0 epochs
        ('{"strategy": "full", "epochs": 0}', "'epochs' must be a whole number of at least 1, got 0"),
        ('{"strategy": "full", "epochs": 3, "eval": [0.9]}', "'eval' must be a JSON object, got list"),
        ('{"strategy": "full", "epochs": 3, "epochs_detail": {}}', "'epochs_detail' must be a JSON array"),
    ]:
        (run_dir / "summary.json").write_text(text)
        with pytest.raises(ValueError, match=rf"r1/summary.json: not a qtune summary \({problem}"):
            build_report([tmp_path / "runs"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        build_report([tmp_path / "empty"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["run", "multirun", "multirun_no_hydra_dir"])
def test_a_refused_command_leaves_the_finished_runs_config_alone(tmp_path, mode):
    """Hydra writes .hydra/ before the job starts; a finished run's must survive a refused
    command, in a single run and in a multirun sweep alike."""
    env = dict(os.environ, WANDB_MODE="offline")
    base = [
        sys.executable,
        "-m",
        "qtune.train",
        *(["-m"] if mode != "run" else []),
        *DIGITS,
        "kernels.backend=torch",
        "trainer.enable_progress_bar=false",
    ]
    if mode == "run":
        base, run_dir = base + [f"hydra.run.dir={tmp_path / 'r'}"], tmp_path / "r"
    else:
        base, run_dir = base + [f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path / "s" / "0"
    first = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    if mode == "multirun_no_hydra_dir":  # e.g. a run made through run(cfg) or run_grid.py
        shutil.rmtree(run_dir / ".hydra")
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text("epochs: 1\n")
    saved = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    summary = (run_dir / "summary.json").read_bytes()
    again = subprocess.run(base + ["seed=7"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "already holds a finished run" in again.stderr
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == saved
    assert (run_dir / "summary.json").read_bytes() == summary


@pytest.mark.parametrize("where", ["mid_epoch", "between_epochs", "last_batch"])
def test_a_resumed_run_keeps_the_metrics_logged_before_its_checkpoint(make_cfg, tmp_path, where):
    from conftest import crash

    # 23 steps per epoch; "last_batch": the step save due on epoch 1's last batch is skipped
    # (the epoch-end save follows), so the resume starts from the end of epoch 0
    stop = {"mid_epoch": crash(step=33), "between_epochs": crash(epoch_start=1), "last_batch": crash(epoch_end=1)}[
        where
    ]
    args = ["experiment=digits", "epochs=2"]
    if where != "between_epochs":
        args.append(f"checkpoint.every_n_train_steps={30 if where == 'mid_epoch' else 46}")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_cfg(args, "r"), extra_callbacks=[stop])
    run(make_cfg(args + [f"ckpt_path={tmp_path / 'r' / 'checkpoints' / 'last.ckpt'}"], "r"))
    run(make_cfg(args, "u"))

    def rows(name):
        keys = ("step", "train/loss", "eval/loss", "prune/samples_trained")
        with open(tmp_path / name / "metrics.csv", newline="") as fh:
            return [tuple(r.get(k) for k in keys) for r in csv.DictReader(fh)]

    # every row of the uninterrupted run, once, with the same values (timings aside)
    assert rows("r") == rows("u")


def test_a_second_command_on_a_run_in_progress_leaves_its_config_alone(tmp_path):
    """Hydra writes .hydra/ before the job refuses the command: a running run's must survive."""
    from qtune.runs.lock import RunDirectoryLock

    run_dir = tmp_path / "busy"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("first: run\n")
    env = dict(os.environ, WANDB_MODE="offline")
    with RunDirectoryLock(run_dir):
        res = subprocess.run(
            [sys.executable, "-m", "qtune.train", "experiment=digits", "epochs=1", f"hydra.run.dir={run_dir}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode != 0 and "is in use by another run" in res.stderr, res.stderr[-2000:]
        assert (run_dir / ".hydra" / "config.yaml").read_text() == "first: run\n"
        assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml"]
