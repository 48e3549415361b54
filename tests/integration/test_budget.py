"""budget=F: any strategy spends F of the matching full run's FLOPs (to within one step), the
LR schedule spans exactly the steps it buys, and a resume keeps the budget."""

from __future__ import annotations

import math

import lightning as L
import pytest

from qtune.lightning.budget import find_budget
from qtune.pruning.budget import full_run_flops
from qtune.train import run

DIGITS = ["experiment=digits", "epochs=4", "batch_size=64"]


class StepLog(L.Callback):
    """Each step's LR and the budget's share spent after it, and each step's cost."""

    def __init__(self):
        self.lr, self.progress, self.cost = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        budget = find_budget(trainer)
        self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.progress.append(budget.progress)
        self.cost.append(budget.last_step / budget.full_run_flops)


@pytest.mark.parametrize("strategy", [["strategy=full"], ["strategy=random"], ["strategy=qtuning"], ["strategy=el2n"]])
def test_every_strategy_spends_the_budget_to_within_one_step(make_cfg, strategy):
    log = StepLog()
    s = run(make_cfg(DIGITS + ["budget=0.5", *strategy]), extra_callbacks=[log])
    step = max(log.cost)
    assert 0.5 - step <= s["flops_vs_full"] <= 0.5
    assert s["budget"] == 0.5 and s["epochs"] == 4
    assert s["epochs_run"] == len(s["epochs_detail"])


def test_a_strategy_that_keeps_less_runs_more_epochs(make_cfg):
    full = run(make_cfg(DIGITS + ["budget=0.5", "strategy=full"], "full"))
    quarter = run(make_cfg(DIGITS + ["budget=0.5", "strategy=random", "strategy.keep_ratio=0.25"], "quarter"))
    assert full["epochs_run"] == 2 and quarter["epochs_run"] == 8
    assert quarter["samples_trained"] == pytest.approx(full["samples_trained"], rel=0.02)


def test_the_schedule_ends_at_the_last_step(make_cfg):
    """The LR follows the share of the budget spent: the last step runs at the end of the
    cosine (within one step), and without warm-up the LR never rises."""
    log = StepLog()
    run(make_cfg(DIGITS + ["budget=0.4", "strategy=random", "scheduler.warmup=0.0"]), extra_callbacks=[log])
    step = max(log.cost) / 0.4  # one step as a share of the budget
    assert log.progress[-1] >= 1 - step and log.progress[-2] < 1 - step / 2
    assert all(b <= a + 1e-12 for a, b in zip(log.lr, log.lr[1:]))
    base = 3e-3  # experiment=digits
    # the LR of the last step was set after the one before it: the cosine at progress[-2]
    import math

    expected = base * 0.5 * (1 + math.cos(math.pi * log.progress[-2]))
    assert log.lr[-1] == pytest.approx(expected, rel=1e-6)


def test_flops_vs_full_of_an_unbudgeted_run(make_cfg):
    s = run(make_cfg(["experiment=digits", "epochs=2", "strategy=random"]))
    assert s["budget"] is None and s["flops_vs_full"] == pytest.approx(
        round(0.5 * s["train_samples_total"]) / s["train_samples_total"]
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["budget=0.1", "strategy=el2n", "strategy.warmup_epochs=2"],
            r"budget=0.1 is below what this run needs \(strategy 'el2n' first runs 2 epoch\(s\) on all "
            r"data and 1 scoring pass\(es\), then one step: 0.59",
        ),
        (["budget=0.001"], r"budget=0.001 is below what this run needs \(one training step"),
    ],
)
def test_a_budget_below_the_warmup_or_one_step_is_refused(make_cfg, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run(make_cfg(DIGITS + overrides))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_keeps_the_budget_and_refuses_another(make_cfg, tmp_path):
    from conftest import crash

    args = DIGITS + ["budget=0.5", "strategy=random", "checkpoint.every_n_train_steps=10"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_cfg(args, "r"), extra_callbacks=[crash(step=25)])
    ckpt = tmp_path / "r" / "checkpoints" / "last.ckpt"
    with pytest.raises(
        ValueError,
        match=r"written with budget=0.5; this run asks for "
        r"budget=0.25 \(config key budget\)",
    ):
        run(make_cfg([*args[:-3], "budget=0.25", "strategy=random", f"ckpt_path={ckpt}"], "r"))
    resumed = run(make_cfg(args + [f"ckpt_path={ckpt}"], "r"))
    whole = run(make_cfg(args, "u"))
    for key in ("samples_trained", "flops_estimate", "epochs_run", "flops_vs_full"):
        assert resumed[key] == whole[key], key
    assert resumed["eval"]["accuracy"] == pytest.approx(whole["eval"]["accuracy"], abs=1e-6)
    # the spent run resumed once more trains nothing
    again = run(make_cfg(args + [f"ckpt_path={ckpt}"], "r"))
    assert again["samples_trained"] == whole["samples_trained"]
    assert again["epochs_run"] == whole["epochs_run"]


def test_full_run_flops_counts_every_token_of_every_epoch():
    from qtune.data.sft import SFTDataset, TokenizedExample

    ds = SFTDataset([TokenizedExample([1, 2], [3]), TokenizedExample([1], [4, 5, 6])])
    assert full_run_flops(3, ds, num_params=10) == 3 * 6 * 10 * (3 + 4)


def test_the_report_puts_budgeted_runs_on_the_full_runs_flops_axis(make_cfg, tmp_path):
    from omegaconf import OmegaConf

    from qtune.cli.report import build_report

    summaries = {}
    for name, extra in [
        ("full", ["strategy=full"]),
        ("full_b", ["strategy=full", "budget=0.5"]),
        ("rand_b", ["strategy=random", "budget=0.5"]),
    ]:
        cfg = make_cfg(["experiment=digits", "epochs=2", *extra], f"runs/{name}")
        summaries[name] = run(cfg)
        (tmp_path / "runs" / name / ".hydra").mkdir()
        OmegaConf.save(cfg, tmp_path / "runs" / name / ".hydra" / "config.yaml")
    rows = build_report([tmp_path / "runs"], tmp_path / "out")["rows"]
    by = {(r["strategy"], r["budget"]): r for r in rows}
    assert set(by) == {("full", None), ("full", 0.5), ("random", 0.5)}
    for key, name in [(("full", 0.5), "full_b"), (("random", 0.5), "rand_b")]:
        assert by[key]["rel_flops"] == pytest.approx(summaries[name]["flops_vs_full"])
    assert by[("full", None)]["rel_flops"] == pytest.approx(1.0)
    assert "| budget |" in (tmp_path / "out" / "report.md").read_text()


def test_denoise_under_a_budget_on_the_embedded_sft_task(make_cfg):
    """Both new parts end to end on the SFT task: the budget is spent to within one step, the
    warm-up epoch trains everything, later epochs leave the suspects out."""
    log = StepLog()
    s = run(
        make_cfg(
            [
                "data.num_train=240",
                "data.num_eval=20",
                "eval.max_items=20",
                "epochs=3",
                "batch_size=16",
                "budget=0.5",
                "strategy=denoise",
                "strategy.keep_ratio=0.1",
                "strategy.warmup_epochs=1",
            ]
        ),
        extra_callbacks=[log],
    )
    assert 0.5 - max(log.cost) <= s["flops_vs_full"] <= 0.5
    first, *later = s["epochs_detail"]
    assert first["samples_trained"] == 240 and first["suspects"] == 0
    assert later and all(
        e["suspects"] == math.floor(e["suspect_fraction"] * 240 + 1e-9) and e["samples_trained"] <= 24 for e in later
    )
    assert s["epochs_run"] == len(s["epochs_detail"]) > 3  # tenth epochs: more of them
