"""qtune-train reports its measured token keep ratio: ``response_tokens`` (response tokens of
the trained samples) and ``token_keep_ratio`` = tokens_trained / response_tokens in
summary.json and per epoch, counted here from the data set's labels; a resumed run books
the same totals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import FAST, compose, crash, tiny_sft_overrides

from qtune.train import run

EPOCHS = 2
HALF = ["+strategy/token=random", "strategy.token.keep_ratio=0.5", "strategy.token.scope=sequence"]
STEP_SAVES = ["checkpoint.every_n_train_steps=3"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_sft_overrides(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny):
    done: dict[str, dict] = {}

    def get(name: str, overrides: list[str]) -> dict:
        if name not in done:
            done[name] = run(compose(FAST + tiny + overrides + [f"run_dir={tmp_path_factory.mktemp(name)}"]))
        return done[name]

    return get


@pytest.fixture(scope="module")
def responses(tiny):
    """Response tokens of each training sample (label coordinates), from the data."""
    from qtune.data.embedded import build_embedded_task

    bundle = build_embedded_task(compose(FAST + tiny).data)
    return np.array([int((lab[1:] != -100).sum()) for lab in bundle.train.labels])


def test_full_keeps_every_response_token(runs, responses):
    s = runs("full", [])
    assert s["response_tokens"] == s["tokens_trained"] == EPOCHS * int(responses.sum())
    assert s["token_keep_ratio"] == 1.0
    assert [e["response_tokens"] for e in s["epochs_detail"]] == [float(responses.sum())] * EPOCHS


def test_a_rule_at_half_keeps_the_per_row_ceiling_sum(runs, responses):
    s = runs("half", HALF)
    kept = sum(max(1, math.ceil(n / 2)) for n in responses if n > 0)
    assert (s["tokens_trained"], s["response_tokens"]) == (EPOCHS * kept, EPOCHS * int(responses.sum()))
    assert s["token_keep_ratio"] == pytest.approx(kept / responses.sum(), rel=1e-12)
    assert 0.5 < s["token_keep_ratio"] < 0.6  # the ceiling adds under one token per row


def test_a_resumed_run_books_the_same_totals(runs, tiny, tmp_path):
    whole = runs("half_saves", HALF + STEP_SAVES)
    overrides = FAST + tiny + HALF + STEP_SAVES + [f"run_dir={tmp_path / 'b'}"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose(overrides), extra_callbacks=[crash(step=whole["epochs_detail"][0]["batches"] + 4)])
    resumed = run(compose(overrides + [f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}"]))
    for key in ("tokens_trained", "response_tokens", "token_keep_ratio"):
        assert resumed[key] == whole[key], key
    for a, b in zip(whole["epochs_detail"], resumed["epochs_detail"]):
        assert (a["tokens_trained"], a["response_tokens"]) == (b["tokens_trained"], b["response_tokens"])
