"""On a fresh machine (an empty cache) a bad config is refused before the base is built, with
the key named, and leaves nothing in the run directory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qtune.train import run

BAD = [  # (overrides, what the error must say), at least one per config group
    ("data.noise_fraction=1.5", r"data.noise_fraction=1.5 is out of range; expected a value in \[0.0, 1.0\]"),
    ("data.num_train=0", r"data.num_train=0 must be at least 1"),
    ("data.skills=[add,foo]", r"data.skills.1='foo' must be one of 'add', 'reverse'"),
    ("data.drop_kinds=[weird]", r"data.drop_kinds.0='weird' must be one of 'clean', 'noisy', 'duplicate'"),
    ("data.max_length=4", r"data.max_length=4 cuts the responses of 6000 of 6000 training items"),
    ("data.min_len=5 data.max_len=3", r"data.min_len=5 must be at most data.max_len=3"),
    ("+data.noise_fraktion=0.1", r"data.noise_fraktion is not a known key \(did you mean noise_fraction"),
    ("scheduler.name=wobbly", r"scheduler.name='wobbly' must be one of 'cosine', 'linear', 'constant'"),
    ("eval.max_items=-3", r"eval.max_items=-3 must be at least 1"),
    ("eval.exact_match=maybe", r"eval.exact_match='maybe' must be true or false"),
    ("strategy=qtuning strategy.policy.q2=maybe", r"strategy.policy.q2"),
    ("strategy=random strategy.keep_ratio=2", r"strategy.keep_ratio"),
    (
        "strategy=ccs strategy.score=aum",
        r"option 'score' is now called 'score_column' \(config key strategy.score_column",
    ),
    ("optim.lr=-1", r"optim.lr=-1 is out of range"),
    ("seed=-1", r"seed=-1 must be at least 0"),
    (
        "experiment=digits data.eval_fraction=0.0001",
        r"data.eval_fraction=0.0001 gives 1 eval and 1796 training items for 10 classes.*\[0.0056, 0.9944\]",
    ),
    ("kernels.backend=cuda_magic", r"kernels.backend='cuda_magic' must be one of 'auto'"),
    ("checkpoint.every_n_train_steps=-1", r"checkpoint.every_n_train_steps=-1 must be at least 0"),
    ("trainer.max_epochs=0", r"trainer.max_epochs=0 must be an integer, at least 1"),
    ("+trainer.callbacks=[]", r"trainer.callbacks is set by qtune itself; add callbacks through"),
    ("+trainer.devise=2", r"trainer.devise is not an argument of lightning.Trainer \(did you mean devices\?\)"),
    ("trainer.devices=abc", r"trainer.devices=abc: lightning.Trainer refuses this .*devices"),
    ("trainer.precision=33", r"trainer.precision=33: lightning.Trainer refuses this .*Precision 33 is invalid"),
    ("logger=wandb logger.mode=sometimes", r"logger.mode='sometimes' must be one of 'offline', 'online'"),
    ("model.hidden_size=abc", r"model.hidden_size='abc' must be an integer"),
    ("model.base.steps=0", r"model.base.steps=0 must be at least 1"),
    ("model.base.loss_on=some", r"model.base.loss_on='some' must be one of 'answer', 'all'"),
    ("epochs=0", r"epochs=0 must be at least 1"),
    ("budget=0", r"budget=0 is out of range; expected a value in \(0.0, 1.0\]"),
    ("budget=1.5", r"budget=1.5 is out of range; expected a value in \(0.0, 1.0\]"),
    ("task=classify", r"task=classify but data=embedded is a sft task"),
    ("+foo=1", r"foo is not a known key"),
    ("model=mlp", r"model=mlp is a classifier; data=embedded needs a causal LM"),
    ("adapter=lora adapter.r=0", r"adapter.r=0 must be at least 1"),
    ("adapter=lora adapter.dropout=1.5", r"adapter.dropout=1.5 is out of range"),
    ("experiment=digits adapter=lora", r"adapter=lora needs a causal LM .* peft cannot wrap model=mlp"),
    ("model.attn_implementation=fast", r"model.attn_implementation='fast' must be one of 'sdpa'"),
    ("model=hf model.path=/tmp model.gguf_file=nope.gguf", r"model.gguf_file=nope.gguf"),
    (
        "model=smollm2_135m model.package=no_such_pkg",
        r"model.package=no_such_pkg is not installed; install it with: pip install no-such-pkg",
    ),
    (
        "data=jsonl data.path=/nonexistent.jsonl model=hf model.path=/tmp",
        r"data.path=/nonexistent.jsonl: no such JSONL file",
    ),
]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty qtune cache, and a base build that fails the test at once instead of taking
    minutes, should a check be missed."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("QTUNE_CACHE", str(cache))

    def no_build(*args, **kwargs):
        raise AssertionError("the base build started before the config was refused")

    monkeypatch.setattr("qtune.models.base_cache.pretrain_base", no_build)
    return cache


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_refused_before_the_base_is_built(make_cfg, tmp_path, empty_cache, overrides, message):
    cfg = make_cfg(overrides.split(), "run")
    with pytest.raises((ValueError, FileNotFoundError, ImportError), match=message):
        run(cfg)
    assert list(empty_cache.iterdir()) == []  # no base, no lock, no temporary directory
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_good_config_gets_past_validation_to_the_base_build(make_cfg, empty_cache):
    """The control: with nothing wrong, the next step is the base build (stopped here)."""
    with pytest.raises(AssertionError, match="base build started"):
        run(make_cfg(["strategy=qtuning"]))


@pytest.mark.parametrize("overrides", ["data.noise_fraction=1.5", "data.max_length=4", "trainer.max_epochs=2 epochs=3"])
def test_the_command_line_refuses_before_the_base_and_writes_only_what_hydra_writes(tmp_path, overrides):
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    cache.mkdir()
    env = dict(os.environ, QTUNE_CACHE=str(cache), WANDB_MODE="offline")
    proc = subprocess.run(
        [sys.executable, "-m", "qtune.train", *overrides.split(), f"hydra.run.dir={run_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert overrides.split("=")[0] in proc.stderr, proc.stderr[-2000:]
    assert "building the base model" not in proc.stdout + proc.stderr
    assert list(cache.iterdir()) == []
    assert {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}  # Hydra's own


def test_report_arguments_are_checked_before_any_summary_is_read(tmp_path, capsys):
    from qtune.cli.report import main

    (tmp_path / "runs").mkdir()
    (tmp_path / "a_file").write_text("x")
    for argv, message in [
        ([str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such run directory: " + str(tmp_path / "nope")),
        (
            [str(tmp_path / "runs"), "--out", str(tmp_path / "o"), "--tokens-rows", "-1"],
            "--tokens-rows=-1 must be at least 0",
        ),
        ([str(tmp_path / "runs"), "--out", str(tmp_path / "a_file")], "is a file; give a directory"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_run_grid_checks_every_point_before_the_first_runs(tmp_path, capsys, monkeypatch):
    from script_module import load_script

    rg = load_script("run_grid")
    ran = []
    monkeypatch.setattr(rg, "run_grid", lambda points, **kw: ran.append(points) or {"failed": []})
    out = tmp_path / "grid"
    points = rg.plan_grid("digits", ["full", "random"], ["0.5"], [0, 1], ["same_epochs"], out)
    bad = rg.GridPoint(out / "digits" / "random-bad" / "seed0", [*points[-1].overrides, "strategy.static=maybe"])
    with pytest.raises(
        SystemExit,
        match=r"grid point .*random-bad.*strategy.static='maybe' "
        r"must be true or false",
    ):
        rg.validate_points([*points, bad])  # the bad point is the last one
    with pytest.raises(SystemExit, match=r"grid point .*data.eval_fraction=2.0 is out of range"):
        rg.main(
            [
                "--task",
                "digits",
                "--strategies",
                "full",
                "random",
                "--seeds",
                "2",
                "--out",
                str(out),
                "--set",
                "data.eval_fraction=2.0",
            ]
        )
    assert ran == [] and not out.exists()


def test_score_runs_the_same_pass_before_the_base_is_built(tmp_path, empty_cache):
    from conftest import FAST, compose

    from qtune.cli.score import score

    for overrides, message in [
        (["data.noise_fraction=1.5"], r"data.noise_fraction=1.5 is out of range"),
        (["eval_batch_size=0"], r"eval_batch_size=0 must be at least 1"),
        (["+devise=cpu"], r"devise is not a known key \(did you mean device"),
    ]:
        cfg = compose(FAST + overrides + [f"out={tmp_path / 's.npz'}"], config_name="score")
        with pytest.raises(ValueError, match=message):
            score(cfg)
    assert list(empty_cache.iterdir()) == [] and not (tmp_path / "s.npz").exists()
