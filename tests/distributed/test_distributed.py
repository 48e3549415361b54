"""Two CPU processes (gloo): plans, shards and statistics stores agree across ranks."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.distributed


def _train(args, run_dir, cwd):
    env = dict(os.environ, WANDB_MODE="offline")
    cmd = [
        sys.executable,
        "-m",
        "qtune.train",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "kernels.backend=torch",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        *args,
    ]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def test_two_ranks_train_the_plan_once_and_agree(tmp_path):
    s = _train(
        ["experiment=digits", "epochs=2", "strategy=random", "strategy.keep_ratio=0.5", "export_plan=true"],
        tmp_path / "ddp",
        tmp_path,
    )
    n = s["train_samples_total"]
    planned = round(0.5 * n)
    for e, entry in enumerate(s["epochs_detail"]):
        assert entry["world_size"] == 2
        # both ranks' shards together: the plan, plus at most one padded repeat
        assert planned <= entry["samples_trained"] <= planned + 1
        exported = json.loads((tmp_path / "ddp" / "plans" / f"epoch_{e:03d}.json").read_text())
        assert len(exported["sample_ids"]) == planned and exported["plan_hash"] == entry["plan_hash"]
    # the per-epoch cross-rank checks (same plan, same statistics store) ran and passed
    assert s["eval"]["accuracy"] > 0.3


@pytest.mark.parametrize("name", ["el2n", "ccs", "infobatch", "seta", "rs2", "qtuning"])
def test_every_strategy_agrees_across_ranks(tmp_path, name):
    """The run itself checks, every epoch, that both ranks hold the same plan and the same
    gathered statistics store (it stops with an error otherwise); scoring passes are sharded."""
    s = _train(["experiment=digits", "epochs=3", f"strategy={name}"], tmp_path / name, tmp_path)
    assert all(e["world_size"] == 2 for e in s["epochs_detail"])
    n = s["train_samples_total"]
    if name in ("el2n", "ccs"):  # one sharded scoring pass over every sample, counted once
        assert n <= s["scoring_forward_tokens"] <= n + 1
    if name == "qtuning":  # per-rank batch decisions over both ranks' micro-batches
        assert abs(s["realised_keep_ratio"] - 0.25) < 0.1


def test_sharded_scoring_pass_equals_one_process(tmp_path):
    """EL2N scored at epoch 0 (initial model, the same on one rank or two): the two-rank
    gathered scores equal one process's, so both pick the same subset."""
    import numpy as np

    args = [
        "experiment=digits",
        "epochs=1",
        "strategy=el2n",
        "strategy.warmup_epochs=0",
        "strategy.keep_ratio=0.5",
        "model.dropout=0.0",
        "export_plan=true",
    ]
    two = _train(args, tmp_path / "two", tmp_path)
    env = dict(os.environ, WANDB_MODE="offline")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "qtune.train",
            *args,
            "kernels.backend=torch",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={tmp_path / 'one'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert two["epochs_detail"][0]["plan_hash"] == one["epochs_detail"][0]["plan_hash"]
    selected = json.loads((tmp_path / "one" / "plans" / "epoch_000.json").read_text())["sample_ids"]
    s1, s2 = np.load(tmp_path / "one" / "scores.npz"), np.load(tmp_path / "two" / "scores.npz")
    untouched = np.ones(len(s1["sample_id"]), dtype=bool)
    untouched[selected] = False  # not trained after the scoring pass: still its values
    assert 0 < untouched.sum() < len(untouched)
    np.testing.assert_allclose(s1["el2n"][untouched], s2["el2n"][untouched], rtol=1e-5, atol=1e-6)


def _rng_rank(rank: int, port: int, out_dir: str) -> None:
    """One rank: consume the generator a rank-specific amount, checkpoint (the callback's
    state_dict is a collective), scramble the generator, restore from rank 0's file."""
    from pathlib import Path
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist

    from qtune import PruningCallback
    from qtune.strategies import build_strategy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)

    class Gloo:
        root_device = torch.device("cpu")

        def all_gather(self, t):
            parts = [torch.empty_like(t) for _ in range(2)]
            dist.all_gather(parts, t.contiguous())
            return torch.stack(parts)

    trainer = SimpleNamespace(world_size=2, global_rank=rank, current_epoch=0, strategy=Gloo())
    cb = PruningCallback(build_strategy("full", seed=0), seed=0, num_samples=10)
    cb._trainer = trainer
    torch.manual_seed(0)  # every rank seeded alike, as seed_everything does ...
    torch.rand(1 + 997 * rank)  # ... but a rank's batches of other shapes draw more numbers
    state = cb.state_dict()
    expected = torch.rand(4)
    ckpt = Path(out_dir) / "state.pt"
    if rank == 0:  # only rank 0 writes the checkpoint
        torch.save(state, ckpt)
    dist.barrier()
    torch.manual_seed(12345)
    fresh = PruningCallback(build_strategy("full", seed=0), seed=0, num_samples=10)
    fresh._trainer = trainer
    fresh.load_state_dict(torch.load(ckpt, weights_only=True))
    got = torch.rand(4)
    (Path(out_dir) / f"rank{rank}.txt").write_text(f"{int(torch.equal(got, expected))} {len(state['rng_per_rank'])}")
    dist.destroy_process_group()


def test_each_rank_resumes_its_own_random_state(tmp_path):
    """A checkpoint holds every rank's generator state, so rank 1's dropout masks after a
    resume are the ones it would have drawn (rank 0's state would give different ones)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rng_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["1 2", "1 2"]


def test_spawned_ranks_report_what_they_trained(tmp_path):
    """trainer=ddp_spawn_cpu (for multirun sweeps and notebooks): the ranks run in spawned
    processes, yet summary.json and metrics.csv describe the same training as the
    re-launched ddp_cpu run."""
    import csv

    args = ["experiment=digits", "epochs=2", "strategy=infobatch"]
    launched = _train(args, tmp_path / "ddp", tmp_path)
    spawned = _train(args + ["trainer=ddp_spawn_cpu"], tmp_path / "spawn", tmp_path)
    for key in ("samples_trained", "tokens_trained", "realised_keep_ratio"):
        assert spawned[key] == launched[key], key
    assert [e["plan_hash"] for e in spawned["epochs_detail"]] == [e["plan_hash"] for e in launched["epochs_detail"]]
    with open(tmp_path / "spawn" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert any(r.get("train/loss") for r in rows) and any(r.get("prune/samples_trained") for r in rows)
    final = [r for r in rows if r.get("final/accuracy")]
    assert len(final) == 1 and float(final[0]["step"]) == max(float(r["step"]) for r in rows)
