"""Token rules with a reference model in qtune-train (``reference.source=self|path|file``), alone
and composed with ``strategy=random``: the tokens trained are exactly what each rule's
definition gives on the samples each epoch's plan trained (counted here from the data, the
exported plans and the loss file), and the FLOPs include the reference passes (2·P_ref per
forwarded token, or what computing the loss file cost). One module fixture shares the tiny runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import FAST, compose, tiny_sft_overrides

from qtune.cli.score import score
from qtune.config.declared import ConfigError
from qtune.pruning.sampler import shard_plan
from qtune.train import run

EPOCHS, BATCH = 2, 16
RANDOM = ["strategy=random", "strategy.keep_ratio=0.5"]


class Runs:
    """Runs by name, each trained once on first use (all with exported plans)."""

    def __init__(self, root):
        self.root, self.tiny, self.done = root, tiny_sft_overrides(root / "cache"), {}

    def cfg(self, name, extra, config_name="train"):
        return compose(FAST + [f"run_dir={self.root / name}", "export_plan=true"] + self.tiny + extra, config_name)

    def __call__(self, name, extra=()):
        if name not in self.done:
            self.done[name] = run(self.cfg(name, list(extra)))
        return self.done[name]

    @property
    def full(self):
        return self("full")

    @property
    def losses(self):
        """qtune-score's per-token losses: the full run's final/ as the reference, plus the base."""
        out = self.root / "losses"
        if "losses" not in self.done:
            self.full
            self.done["losses"] = score(
                self.cfg(
                    "score",
                    [
                        f"token_losses.out={out}",
                        "token_losses.base=true",
                        "+strategy/token=tokencleaning",  # the training run's own overrides may stay
                        "reference.source=path",
                        f"reference.path={self.root / 'full' / 'final'}",
                    ],
                    "score",
                )
            )
        return out

    def plans(self, name):
        return [
            json.loads((self.root / name / "plans" / f"epoch_{e:03d}.json").read_text())["sample_ids"]
            for e in range(EPOCHS)
        ]

    def responses(self):
        """Response tokens of each training sample, in label coordinates, from the data."""
        from qtune.data.embedded import build_embedded_task

        bundle = build_embedded_task(self.cfg("data", []).data)
        return np.array([int((lab[1:] != -100).sum()) for lab in bundle.train.labels])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("reference"))


def keep(n, ratio):
    """max(1, ceil(ratio·n)) for n > 0 (the rules' count)."""
    return 0 if n == 0 else max(1, math.ceil(round(n * ratio, 9)))


def per_sample(runs, name, counts):
    return sum(int(counts[i]) for ids in runs.plans(name) for i in ids)


def per_batch(runs, name, n, ratio):
    """Batch scope: ⌈ratio·(response tokens of the micro-batch)⌉, batches in the loader's order."""
    total = 0
    for epoch, ids in enumerate(runs.plans(name)):
        order = shard_plan(np.array(ids), seed=0, epoch=epoch, rank=0, world_size=1).tolist()
        total += sum(keep(int(n[order[s : s + BATCH]].sum()), ratio) for s in range(0, len(order), BATCH))
    return total


def file_scores(path):
    base = np.load(path / "base_loss.npy").astype(np.float32)
    ref = np.load(path / "ref_loss.npy").astype(np.float32)
    return base - ref


def grad_flops(s):
    p, pt = s["num_params"], s["trainable_params"]
    return (4 * p + 2 * pt) * s["forward_tokens_trained"]


CASES = {
    "rho1_self": ["+strategy/token=rho1", "reference.source=self"],
    "rho1_file_random": [*RANDOM, "+strategy/token=rho1", "reference.source=file"],
    "tc_global": ["+strategy/token=tokencleaning", "reference.source=file"],
    "tc_global_random": [*RANDOM, "+strategy/token=tokencleaning", "reference.source=file"],
    "tc_seq_random": [
        *RANDOM,
        "+strategy/token=tokencleaning",
        "strategy.token.scope=sequence",
        "reference.source=path",
    ],
    "asft_self": ["+strategy/token=asft", "reference.source=self"],
    "asft_self_random": [*RANDOM, "+strategy/token=asft", "reference.source=self"],
    "eaft": ["+strategy/token=eaft"],
    "eaft_random": [*RANDOM, "+strategy/token=eaft"],
}


def case(runs, name):
    extra = list(CASES[name])
    if "reference.source=file" in extra:
        extra.append(f"reference.path={runs.losses}")
    if "reference.source=path" in extra:
        extra.append(f"reference.path={runs.root / 'full'}")  # a run directory: its final/
    return runs(name, extra)


def test_rho1_trains_the_top_share_of_each_micro_batch(runs):
    n = runs.responses()
    alone, composed = case(runs, "rho1_self"), case(runs, "rho1_file_random")
    assert alone["tokens_trained"] == per_batch(runs, "rho1_self", n, 0.6)
    assert composed["tokens_trained"] == per_batch(runs, "rho1_file_random", n, 0.6)
    assert composed["samples_trained"] == EPOCHS * 60  # random's half of 120 samples
    # self: one reference forward per trained token (same size as the model): 2·P each
    assert alone["scoring_forward_tokens"] == alone["forward_tokens_trained"]
    assert alone["flops_estimate"] == pytest.approx(
        grad_flops(alone) + 2 * alone["num_params"] * alone["forward_tokens_trained"]
    )
    # file: what computing it cost, once (the reference and the base over every token)
    file_flops = runs.done["losses"]["flops"]
    assert file_flops == pytest.approx(2 * 2 * composed["num_params"] * runs.done["losses"]["tokens_forwarded"])
    assert composed["scoring_forward_tokens"] == 0
    assert composed["flops_estimate"] == pytest.approx(grad_flops(composed) + file_flops)
    assert composed["reference"]["source"] == "file" and composed["reference"]["file_flops"] == file_flops
    assert alone["reference"] == {"source": "self", "path": None, "params": alone["num_params"], "copy": True}


def test_tokencleaning_global_keeps_the_file_scores_above_the_data_set_threshold(runs):
    scores = file_scores(runs.losses)
    finite = np.sort(scores[np.isfinite(scores)])[::-1]
    threshold = finite[keep(finite.size, 0.6) - 1]  # the ⌈0.6·n⌉-th largest over the data set
    alone, composed = case(runs, "tc_global"), case(runs, "tc_global_random")
    assert alone["reference"]["threshold"] == pytest.approx(float(threshold))
    kept = np.where(np.isfinite(scores), scores >= threshold, False).sum(-1)
    assert alone["tokens_trained"] == EPOCHS * kept.sum()
    assert composed["tokens_trained"] == per_sample(runs, "tc_global_random", kept)
    assert 0.55 <= kept.sum() / finite.size <= 0.65
    assert alone["flops_estimate"] == pytest.approx(grad_flops(alone) + runs.done["losses"]["flops"])


def test_tokencleaning_per_sequence_forwards_the_base_and_the_path_reference(runs):
    s = case(runs, "tc_seq_random")
    n = runs.responses()
    assert s["tokens_trained"] == per_sample(runs, "tc_seq_random", [keep(k, 0.6) for k in n])
    assert s["scoring_forward_tokens"] == 2 * s["forward_tokens_trained"]  # base + reference, each 2·P
    ref = s["reference"]
    assert ref["source"] == "path" and ref["dir"].endswith("final") and ref["base"]["source"] == "self"
    assert ref["training_flops"] == pytest.approx(runs.full["flops_estimate"])  # what the reference cost


def test_reweighting_rules_train_every_response_token_of_the_trained_samples(runs):
    n = runs.responses()
    for name in ("asft_self", "eaft"):
        assert case(runs, name)["tokens_trained"] == runs.full["tokens_trained"] == EPOCHS * n.sum()
    for name in ("asft_self_random", "eaft_random"):
        assert case(runs, name)["tokens_trained"] == per_sample(runs, name, n)
    asft, eaft = case(runs, "asft_self"), case(runs, "eaft")
    assert asft["scoring_forward_tokens"] == asft["forward_tokens_trained"]  # the reference's logits
    assert eaft["scoring_forward_tokens"] == 0 and eaft["reference"] is None  # no reference
    assert eaft["flops_estimate"] == runs.full["flops_estimate"]
    losses = {runs.full["eval"]["loss"], asft["eval"]["loss"], eaft["eval"]["loss"]}
    assert len(losses) == 3  # each trained on its own loss


def test_a_lora_self_reference_costs_the_frozen_base(runs):
    s = runs("rho1_lora", ["+strategy/token=rho1", "reference.source=self", "adapter=lora"])
    p, pt = s["num_params"], s["trainable_params"]
    assert s["reference"]["copy"] is False and s["reference"]["params"] == p - pt
    assert s["scoring_forward_tokens"] == pytest.approx(s["forward_tokens_trained"] * (p - pt) / p, abs=1)


def test_a_budget_spends_the_reference(runs):
    """The loss file is spent before the first step; online reference passes with each step."""
    for name, extra in {
        "budget_file": [*CASES["rho1_file_random"], f"reference.path={runs.losses}", "budget=0.5"],
        "budget_self": [*CASES["rho1_self"], "budget=0.5"],
    }.items():
        s = runs(name, extra)
        full = runs.full["flops_estimate"]
        step = (6 * s["num_params"] + 2 * s["num_params"]) * 16 * 25  # the dearest step's bound
        assert 0.5 * full - step <= s["flops_estimate"] <= 0.5 * full + 1e-6 * full
    with pytest.raises(ValueError, match="reference's loss file"):
        runs("budget_tiny", [*CASES["rho1_file_random"], f"reference.path={runs.losses}", "budget=0.05"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["+strategy/token=rho1"], r"needs a reference model \(config key reference\.source\)"),
        (["+strategy/token=asft", "reference.source=file", "reference.path=."], "a loss file does not hold"),
        (["+strategy/token=tokencleaning", "reference.source=self"], "scope=global ranks every token"),
        (
            ["+strategy/token=tokencleaning", "strategy.token.scope=sequence", "reference.source=self"],
            "would score 0 everywhere",
        ),
        (["reference.source=path"], r"reference\.source=path needs reference\.path"),
        (["reference.path=."], r"reference\.path=\. is read only with"),
    ],
)
def test_a_missing_or_unusable_reference_is_refused_by_key(runs, extra, message):
    with pytest.raises(ConfigError, match=message):
        run(runs.cfg("refused", extra))


def test_a_loss_file_for_other_data_is_refused(runs):
    other = ["+strategy/token=rho1", "reference.source=file", f"reference.path={runs.losses}", "data.num_train=100"]
    with pytest.raises(ValueError, match=r"reference\.path=.*sample count"):
        run(runs.cfg("other_data", other))


def test_qtune_score_writes_token_losses_only_from_a_model_reference(runs):
    with pytest.raises(ConfigError, match=r"token_losses\.out=.*reference\.source=self or"):
        score(runs.cfg("score_none", [f"token_losses.out={runs.root / 'nothing'}"], "score"))
    assert not (runs.root / "nothing").exists()
    meta = json.loads((runs.losses / "meta.json").read_text())
    assert meta["columns"] == ["ref_loss", "base_loss"] and meta["num_samples"] == 120


def test_resuming_with_another_reference_is_refused_by_key(runs):
    """A checkpoint records what the rule compared with: a resume against another reference
    would change the rule's decisions mid-run."""
    case(runs, "asft_self")
    runs.full  # the other reference: a finished run
    ckpt = runs.root / "asft_self" / "checkpoints" / "last.ckpt"
    other = [*CASES["asft_self"][:-1], "reference.source=path", f"reference.path={runs.root / 'full'}"]
    with pytest.raises(ValueError, match=r"reference\.source: 'self' -> 'path'"):
        run(runs.cfg("asft_resumed", other + [f"ckpt_path={ckpt}"]))
