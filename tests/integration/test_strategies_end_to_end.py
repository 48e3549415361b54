"""Every registered strategy trains end to end through ``qtune-train`` (digits, 3 epochs)."""

import pytest

from qtune.strategies import registered_names
from qtune.train import run

EPOCHS = 3


@pytest.mark.parametrize("name", [n for n in registered_names() if n != "full"])
def test_strategy_trains_and_accounts_for_what_it_kept(make_cfg, name):
    s = run(make_cfg(["experiment=digits", f"epochs={EPOCHS}", f"strategy={name}"], name))
    n = s["train_samples_total"]
    assert s["strategy"] == name
    assert 0 < s["samples_trained"] < EPOCHS * n  # it pruned something
    assert s["realised_keep_ratio"] == pytest.approx(s["samples_trained"] / (EPOCHS * n))
    assert s["eval"]["accuracy"] > 0.3  # well above chance (0.1) even at rs2's 10 % per epoch
    per_epoch = [e["samples_trained"] for e in s["epochs_detail"]]
    assert sum(per_epoch) == s["samples_trained"]
    if name in ("el2n", "ccs"):  # a scoring pass over every sample after the warm-up epoch
        assert s["scoring_forward_tokens"] >= n and per_epoch[0] == n
    if name == "qtuning":  # per-batch decisions from a no-grad scoring forward of every row
        assert s["scoring_forward_tokens"] == EPOCHS * n
        assert abs(s["realised_keep_ratio"] - 0.25) < 0.1
        first = s["epochs_detail"][0]
        assert sum(first[q] for q in ("q1", "q2", "q3", "q4", "middle")) == n  # every row placed
        assert first["kept"] == first["samples_trained"] and 0 <= first["alpha"] <= 0.49
