"""PruningMixin under torchrun and accelerate launch: two CPU processes (gloo) train each planned
id once between them, hold equal stores, histories and weights, and resume exactly."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from tiny_hf import save_tiny_llama

pytestmark = pytest.mark.distributed

JOB = Path(__file__).with_name("hf_job.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
STEP = 4 * 2  # per-device batch x ranks: the plan is padded to whole rounds of this
# --standalone: a free port of its own, so that runs elsewhere on the machine cannot collide
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ONE = [sys.executable]  # one process
CASES = {
    "random": {"keep_ratio": 0.5},
    "infobatch": {"prune_ratio": 0.5},
    "qtuning": {"sample_ratio": 0.25, "token_ratio": 0.5},
    "el2n": {"warmup_epochs": 1, "keep_ratio": 0.5},
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("hfdist") / "llama")


def run(model_dir, out, pruning, *args, launcher=TORCHRUN, expect_ok=True, env=ENV):
    cmd = [*launcher, str(JOB), "--model", str(model_dir), "--out", str(out), "--pruning", pruning]
    cmd += ["--options", json.dumps(CASES.get(pruning, {})), *map(str, args)]
    res = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)
    if not expect_ok:
        return res
    assert res.returncode == 0, res.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(1 if launcher is ONE else 2)]


@pytest.fixture(scope="module")
def shared_run(model_dir, tmp_path_factory):
    """Runs several tests read, made once: ``shared_run(pruning, *args)``."""
    done = {}

    def get(pruning, *args):
        key = (pruning, *map(str, args))
        if key not in done:
            done[key] = run(model_dir, tmp_path_factory.mktemp(pruning), pruning, *args)
        return done[key]

    return get


def assert_each_planned_id_trained_once(a, b):
    """Both ranks' trained ids of each epoch: every planned id, each once apart from the pad
    repeats, in equal numbers per rank (no rank waits at the end). Yields (epoch, plan)."""
    for epoch, plan in a["plans"].items():
        trained = Counter(a["trained"][epoch] + b["trained"][epoch])
        assert sorted(trained) == plan
        assert sum(trained.values()) == -(-len(plan) // STEP) * STEP
        assert len(a["trained"][epoch]) == len(b["trained"][epoch])
    return list(a["plans"].items())


def assert_ranks_agree(a, b):
    for key in ("store", "history", "weights", "params", "plans", "global_step"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("pruning", list(CASES))
def test_two_ranks_train_each_planned_id_once_and_agree(shared_run, pruning):
    a, b = shared_run(pruning, "--epochs", 3, "--trainer", "trainer")
    assert a["world_size"] == b["world_size"] == 2
    assert_ranks_agree(a, b)  # the runs also check plans and stores each epoch, and stop if not
    for epoch, plan in assert_each_planned_id_trained_once(a, b):
        padded = -(-len(plan) // STEP) * STEP
        entry = a["history"][int(epoch)]
        if pruning != "qtuning":  # the batch plan trains a share of each batch
            assert entry["samples_trained"] == padded
        assert entry["batches"] == padded // STEP
    assert a["last_lr"] == pytest.approx(0.0, abs=1e-12)  # the schedule ends at the last step run
    if pruning == "el2n":  # one scoring pass over every sample, shared by the ranks
        assert [h["scoring_tokens"] for h in a["history"]] == [0.0, 40 * 12, 0.0]
    if pruning == "infobatch":
        assert any(w is not None and max(w) > 1.0 for w in a["weights"].values())  # rescaled kept samples


def test_random_plans_equal_one_process_plans(model_dir, tmp_path, shared_run):
    two = shared_run("random")[0]
    one = run(model_dir, tmp_path / "one", "random", launcher=ONE)[0]
    assert one["world_size"] == 1 and two["plans"] == one["plans"]


def test_sft_trainer_with_lora_on_two_ranks(model_dir, tmp_path):
    a, b = run(model_dir, tmp_path / "sft", "qtuning", "--trainer", "sft", "--peft", "--batch-size", 8)
    assert_ranks_agree(a, b)
    # a quarter of each 8-sample batch: 2 per batch, 3 batches per rank (40 padded to 48)
    assert [h["samples_trained"] for h in a["history"]] == [12.0, 12.0]


def test_sft_packing_on_two_ranks_trains_each_planned_id_in_rows(model_dir, tmp_path):
    """SFTTrainer(packing=True): qtune packs each epoch's kept samples into rows of max_length
    tokens; the ranks share the rows batch by batch (4 rows each), padded to whole rounds."""
    config = json.dumps({"packing": True, "max_length": 16})
    a, b = run(model_dir, tmp_path / "packed", "random", "--trainer", "sft", "--sft-config", config)
    assert_ranks_agree(a, b)
    for epoch, plan in a["plans"].items():
        entry, ids = a["history"][int(epoch)], a["trained"][epoch] + b["trained"][epoch]
        assert sorted(Counter(ids)) == plan and entry["samples_trained"] == len(ids)
        assert entry["packing_tokens"] == sum(a["lengths"][i] for i in plan)
        rounds = -(-entry["packing_rows"] // STEP)  # rows padded to whole rounds of 2 x 4 rows
        assert entry["batches"] == rounds and rounds < -(-len(plan) // STEP)  # fewer steps than unpacked
    assert a["last_lr"] == pytest.approx(0.0, abs=1e-12)


def test_accelerate_launch_runs_the_same_plans(model_dir, tmp_path, shared_run):
    import socket

    with socket.socket() as sock:  # a free port for the main process
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launcher += ["--main_process_port", str(port)]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    a, b = run(model_dir, tmp_path / "acc", "random", launcher=launcher)
    torchrun = shared_run("random")[0]
    assert_ranks_agree(a, b)
    assert a["plans"] == torchrun["plans"] and a["params"] == torchrun["params"]


def test_a_token_rule_books_the_same_token_totals_on_both_ranks(model_dir, tmp_path):
    """random 0.5 samples x random 0.3 tokens: every trained row keeps ⌈0.3·8⌉ = 3 of its 8
    response tokens, on whichever rank it trained; both ranks book the summed count."""
    options = json.dumps({"keep_ratio": 0.3})
    a, b = run(model_dir, tmp_path / "tokens", "random", "--token", "random", "--token-options", options)
    assert_ranks_agree(a, b)
    assert a["totals"] == b["totals"]
    for entry in a["history"]:
        rows = len(a["trained"][str(entry["epoch"])]) + len(b["trained"][str(entry["epoch"])])
        assert entry["samples_trained"] == rows
        assert entry["tokens_trained"] == 3 * rows
    assert a["totals"]["tokens_trained"] == 3 * a["totals"]["samples_trained"]


@pytest.mark.slow  # a two-rank SFTTrainer run, about a minute on two cores
def test_a_lora_self_reference_runs_on_every_rank(model_dir, tmp_path):
    """rho1 against the starting model, SFTTrainer + LoRA on two ranks: each rank forwards its
    own micro-batches through the model inside the DDP wrapper with its adapters disabled, and
    both book the reference tokens of all ranks (the frozen base's share of each token)."""
    a, b = run(
        model_dir,
        tmp_path / "ref",
        "random",
        *("--trainer", "sft", "--peft", "--batch-size", 8, "--token", "rho1", "--reference", "self"),
    )
    assert_ranks_agree(a, b)
    assert a["totals"] == b["totals"] and a["flops"] == b["flops"]
    p, pt = a["param_counts"]
    forward = a["totals"]["forward_tokens"]
    assert a["totals"]["scoring_tokens"] == pytest.approx(forward * (p - pt) / p)
    assert a["flops"] == pytest.approx((4 * p + 2 * pt) * forward + 2 * (p - pt) * forward)


def test_budget_stops_every_rank_at_the_same_step(model_dir, tmp_path):
    a, b = run(model_dir, tmp_path / "budget", "random", "--budget", 0.5, "--epochs", 4)
    assert_ranks_agree(a, b)
    assert 0.45 <= a["budget_spent"] <= 0.5  # within one step of half the full run's FLOPs
    assert a["budget_spent"] == b["budget_spent"]


@pytest.fixture(scope="module")
def stopped_runs(model_dir, tmp_path_factory):
    """Per trainer: its arguments and a two-rank run stopped right after its last checkpoint."""
    runs = {}
    for trainer, pruning, args, save, stop in (
        ("trainer", "infobatch", ["--epochs", 3], 3, 9),
        ("sft", "random", ["--batch-size", 8], 2, 4),
    ):
        args = [*args, "--trainer", trainer]
        out = tmp_path_factory.mktemp(f"stopped_{trainer}") / "run"
        out.mkdir()
        res = run(model_dir, out, pruning, *args, "--save-steps", save, "--stop-after", stop, expect_ok=False)
        assert res.returncode == 0 and not (out / "rank0.json").exists(), res.stderr[-3000:]  # stopped
        runs[trainer] = (pruning, args, out)
    return runs


# InfoBatch on two ranks runs 5, 4 and 5 steps: step 3 is inside epoch 0, step 6 inside the
# pruned epoch 1, step 9 its last step (saved before the epoch is booked)
@pytest.mark.parametrize("trainer, step", [("trainer", 3), ("trainer", 6), ("trainer", 9), ("sft", 2)])
def test_a_stopped_two_rank_run_resumes_to_the_same_weights(
    model_dir, tmp_path, shared_run, stopped_runs, trainer, step
):
    pruning, args, stopped = stopped_runs[trainer]
    whole = shared_run(pruning, *args)[0]
    out = tmp_path / "resumed"
    out.mkdir()
    a, b = run(model_dir, out, pruning, *args, "--resume", stopped / f"checkpoint-{step}")
    assert_ranks_agree(a, b)
    assert a["params"] == whole["params"] and a["store"] == whole["store"]
    assert [h["batches"] for h in a["history"]] == [h["batches"] for h in whole["history"]]


def test_resume_on_another_world_size(model_dir, tmp_path):
    """At an epoch's end the plan re-shards over another world size; mid-epoch it is refused."""
    out = tmp_path / "epochs"
    two = run(model_dir, out, "infobatch", "--epochs", 3, "--save-epochs")[0]
    for f in out.glob("rank*.json"):
        f.unlink()
    resumed = run(model_dir, out, "infobatch", "--epochs", 3, "--resume", out / "checkpoint-5", launcher=ONE)[0]
    assert resumed["world_size"] == 1
    assert [h["world_size"] for h in resumed["history"]] == [2, 1, 1]
    assert resumed["plans"]["1"] == two["plans"]["1"]  # planned from the same epoch-0 scores
    assert resumed["history"][1]["batches"] == -(-len(two["plans"]["1"]) // 4)  # one rank's steps now
    out = tmp_path / "mid"
    run(model_dir, out, "infobatch", "--save-steps", 3, "--stop-after", 3, expect_ok=False)
    mid = run(model_dir, out, "infobatch", "--resume", out / "checkpoint-3", launcher=ONE, expect_ok=False)
    assert mid.returncode != 0 and "taken mid-epoch with 2 ranks" in mid.stderr


@pytest.mark.slow  # about three minutes: DeepSpeed starts slowly on CPU
def test_deepspeed_zero_trains_the_plan_and_resumes_exactly(model_dir, tmp_path):
    """ZeRO-2 and ZeRO-3 through Trainer's ``deepspeed`` argument, on DeepSpeed's CPU
    accelerator (gloo): each planned id is trained once across the ranks, the ranks agree, the
    scoring pass is split over them, and a ZeRO-2 run stopped inside the pruned epoch resumes
    to the same weights as the uninterrupted one."""
    pytest.importorskip("deepspeed")
    env = dict(ENV, DS_ACCELERATOR="cpu")
    for stage in (2, 3):
        a, b = run(model_dir, tmp_path / f"zero{stage}", "el2n", "--epochs", 2, "--zero", stage, env=env)
        assert_ranks_agree(a, b)
        assert_each_planned_id_trained_once(a, b)
        assert [h["scoring_tokens"] for h in a["history"]] == [0.0, 40 * 12]
    args = ["--epochs", 3, "--zero", 2]
    whole = run(model_dir, tmp_path / "whole", "infobatch", *args, env=env)[0]
    out = tmp_path / "stopped"
    run(model_dir, out, "infobatch", *args, "--save-steps", 3, "--stop-after", 6, expect_ok=False, env=env)
    a, b = run(model_dir, out, "infobatch", *args, "--resume", out / "checkpoint-6", env=env)
    assert_ranks_agree(a, b)
    assert a["params"] == whole["params"] and a["store"] == whole["store"]
