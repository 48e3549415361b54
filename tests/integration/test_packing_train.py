"""``qtune-train data.packing=true`` on the embedded task: every strategy trains on packed rows
and accounts for what it trained; packed and padded runs that do not move the weights store
the same per-sample scores; a mid-epoch resume is exact; long samples are refused or cut."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FAST, compose, crash, tiny_sft_overrides

from qtune.config.declared import ConfigError
from qtune.train import run

PACK = ["data.packing=true", "data.max_tokens_per_row=64"]
# a learning rate too small to change any fp32 weight (the config refuses 0): the model stays
# put, so every epoch scores each sample with the same weights, packed or padded
STILL = ["optim.lr=1e-30", "epochs=1"]
STORE = ("loss", "entropy", "el2n", "p_label", "margin", "accuracy", "num_tokens")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny SFT overrides with one base cache for the whole module (built once)."""
    return tiny_sft_overrides(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny):
    """``runs(name, overrides)``: each distinct run once per module (tests share them)."""
    done: dict[str, tuple[dict, object]] = {}

    def get(name: str, overrides: list[str]):
        if name not in done:
            run_dir = tmp_path_factory.mktemp(name)
            done[name] = (run(compose(FAST + tiny + overrides + [f"run_dir={run_dir}"])), run_dir)
        return done[name]

    return get


STRATEGIES = {
    "full": [],
    "random": [],
    "rs2": ["strategy.keep_ratio=0.5"],
    "el2n": [],
    "ccs": [],
    "infobatch": [],
    "seta": [],
    "denoise": ["strategy.warmup_epochs=1", "strategy.suspect_fraction=0.2"],  # (auto: all, so early)
    "qtuning": [],
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_trains_on_packed_rows(runs, name):
    s, run_dir = runs(f"packed_{name}", PACK + [f"strategy={name}", "export_plan=true"] + STRATEGIES[name])
    n, epochs = s["train_samples_total"], len(s["epochs_detail"])
    assert s["packing"]["max_tokens_per_row"] == 64 and s["packing"]["truncated_samples"] == 0
    assert s["packing"]["rows"] == sum(e["packing_rows"] for e in s["epochs_detail"])
    for e in s["epochs_detail"]:
        assert e["packing_rows"] < e["planned_samples"]  # rows hold several samples
        assert e["packing_padding_share"] < e["padded_padding_share"]
        assert e["packing_tokens"] > 0
    tokens = sum(e["packing_tokens"] for e in s["epochs_detail"])
    if name == "qtuning":  # every packed batch scored, only the kept samples (re-packed) trained
        assert s["scoring_forward_tokens"] == tokens
        assert 0 < s["forward_tokens_trained"] < tokens
        for e in s["epochs_detail"]:
            assert e["kept"] == e["samples_trained"] < e["planned_samples"] == n
        assert abs(s["realised_keep_ratio"] - 0.25) < 0.1
        exported = json.loads((run_dir / "plans" / "tokens_epoch_000.json").read_text())["rows"]
        assert len(exported) == n  # one row per sample, its kept tokens among its response ones
        assert all(set(r["kept"]) <= set(r["response"]) for r in exported)
        assert sum(bool(r["kept"]) for r in exported) == s["epochs_detail"][0]["kept"]
    else:  # one rank: each planned sample in exactly one row, its tokens forwarded once
        assert [e["samples_trained"] for e in s["epochs_detail"]] == [e["planned_samples"] for e in s["epochs_detail"]]
        assert s["forward_tokens_trained"] == tokens
    if name not in ("full", "infobatch"):  # (InfoBatch keeps everything in its last epoch)
        assert s["samples_trained"] < epochs * n
    assert np.isfinite(s["eval"]["loss"])


def read_store(run_dir) -> dict[str, np.ndarray]:
    with np.load(run_dir / "scores.npz") as z:
        return {k: z[k] for k in STORE}


@pytest.mark.parametrize("name,attn", [("full", "sdpa"), ("qtuning", "sdpa"), ("qtuning", "sdpa_segments")])
def test_packed_and_padded_runs_store_the_same_scores(runs, name, attn):
    """Also under ``sdpa_segments`` (packed rows attended per sample, no block mask)."""
    padded, pad_dir = runs(f"still_padded_{name}", STILL + [f"strategy={name}"])
    attention = [] if attn == "sdpa" else [f"model.attn_implementation={attn}"]
    packed, pack_dir = runs(
        f"still_packed_{name}{'_' + attn if attention else ''}", STILL + PACK + [f"strategy={name}"] + attention
    )
    want, got = read_store(pad_dir), read_store(pack_dir)
    assert np.isfinite(want["loss"]).all()  # every sample scored
    assert np.array_equal(got["num_tokens"], want["num_tokens"])
    for k in STORE[:-1]:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    # the forward work of packed rows is the samples' tokens, as padded batches count theirs
    key = "scoring_forward_tokens" if name == "qtuning" else "forward_tokens_trained"
    assert packed[key] == padded[key]
    if name == "full":
        for k in ("samples_trained", "tokens_trained"):
            assert packed[k] == padded[k], k
        assert packed["wrong_tokens_trained"] == padded["wrong_tokens_trained"] > 0


def test_a_token_rule_on_packed_rows_trains_the_padded_tokens(runs):
    """PPL token pruning decides per sample on packed rows too: at a standing model it keeps
    exactly the padded run's tokens, wrong-answer tokens included."""
    rule = ["+strategy/token=ppl", "strategy.token.keep_ratio=0.5"]
    padded, _ = runs("rule_padded", STILL + rule)
    packed, _ = runs("rule_packed", STILL + PACK + rule)
    full, _ = runs("still_packed_full", STILL + PACK + ["strategy=full"])
    assert packed["token_rule"] == "ppl"
    for k in ("samples_trained", "tokens_trained", "wrong_tokens_trained"):
        assert packed[k] == padded[k], k
    assert 0.4 <= packed["tokens_trained"] / full["tokens_trained"] <= 0.6


def test_a_hugging_face_model_on_jsonl_scores_alike_packed(tmp_path):
    """The same through model=hf data=jsonl (a real tokenizer and chat template, its pad id)."""
    from tiny_hf import ROWS, save_tiny_llama

    root = tmp_path
    model_dir = save_tiny_llama(root / "model", chat_template=True)
    data = root / "train.jsonl"
    data.write_text("\n".join(json.dumps(ROWS[i % 4]) for i in range(40)) + "\n")
    hf = ["model=hf", f"model.path={model_dir}", "data=jsonl", f"data.path={data}", "batch_size=8"]
    pad_dir, pack_dir = root / "padded", root / "packed"
    padded = run(compose(FAST + STILL + hf + [f"run_dir={pad_dir}"]))
    packed = run(
        compose(FAST + STILL + hf + ["data.packing=true", "data.max_tokens_per_row=48", f"run_dir={pack_dir}"])
    )
    want, got = read_store(pad_dir), read_store(pack_dir)
    for k in STORE:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert packed["packing"]["rows"] < packed["samples_trained"] == padded["samples_trained"]
    assert packed["tokens_trained"] == padded["tokens_trained"]


RESUME = PACK + [
    "strategy=infobatch",
    "epochs=2",
    "batch_size=4",
    "data.max_tokens_per_row=48",
    "checkpoint.every_n_train_steps=3",
]


def test_mid_epoch_resume_under_packing_is_exact(runs, tmp_path, tiny):
    whole, _ = runs("resume_whole", RESUME)
    batches = whole["epochs_detail"][0]["batches"]
    crash_at = batches + 5  # checkpoint at batches + 3 or so: mid-epoch 1
    assert whole["epochs_detail"][1]["batches"] > 5
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose(FAST + tiny + RESUME + [f"run_dir={tmp_path / 'b'}"]), extra_callbacks=[crash(step=crash_at)])
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="data.max_tokens_per_row"):  # other rows: refused
        run(
            compose(
                FAST + tiny + RESUME + ["data.max_tokens_per_row=56", f"ckpt_path={ckpt}", f"run_dir={tmp_path / 'b'}"]
            )
        )
    resumed = run(compose(FAST + tiny + RESUME + [f"ckpt_path={ckpt}", f"run_dir={tmp_path / 'b'}"]))
    for key in ("samples_trained", "tokens_trained", "forward_tokens_trained", "eval", "packing"):
        assert resumed[key] == whole[key], key
    for a, b in zip(whole["epochs_detail"], resumed["epochs_detail"]):
        for key in ("plan_hash", "samples_trained", "tokens_trained", "batches", "packing_rows"):
            assert a[key] == b[key], key


def test_samples_longer_than_a_row_are_refused_or_cut(runs, tiny, tmp_path):
    from qtune.data.embedded import build_embedded_task

    cfg = compose(FAST + tiny + [f"run_dir={tmp_path / 'x'}"])
    lengths = [len(x) for x in build_embedded_task(cfg.data).train.input_ids]
    cap = sorted(lengths)[len(lengths) // 2]  # half the samples are longer
    with pytest.raises(ValueError, match=f"data.max_tokens_per_row={cap}"):
        run(compose(FAST + tiny + ["data.packing=true", f"data.max_tokens_per_row={cap}", f"run_dir={tmp_path / 'r'}"]))
    s, _ = runs("truncate", ["data.packing=true", f"data.max_tokens_per_row={cap}", "data.packing_policy=truncate"])
    longer = sum(n > cap for n in lengths)
    assert longer > 0 and s["packing"]["truncated_samples"] == len(s["epochs_detail"]) * longer
    assert s["packing"]["max_tokens_per_row"] == cap


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["experiment=digits", "data.packing=true"], "data.packing=true packs token sequences"),
        (["data.packing=true", "data.packing_policy=drop"], "data.packing_policy='drop'"),
        (["data.packing=true", "data.max_tokens_per_row=0"], "data.max_tokens_per_row=0 must be at least 1"),
        (["data.packing=true", "model.attn_implementation=flash_attention_2"], "only in a batch of one row"),
    ],
)
def test_bad_packing_settings_are_refused_by_key(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(make_cfg(overrides, "refused"))


def test_a_token_rule_reading_a_reference_is_refused_with_packing():
    from omegaconf import OmegaConf

    from qtune.config.declared import ConfigError
    from qtune.config.reference import check_reference
    from qtune.strategies.token_registry import build_token_rule

    cfg = OmegaConf.create({"task": "sft", "data": {"packing": True}, "reference": {"source": "self"}})
    for name in ("rho1", "eaft", "asft"):
        with pytest.raises(ConfigError, match=f"strategy.token='{name}'.*data.packing=true"):
            check_reference(cfg, build_token_rule(name))
    check_reference(cfg, build_token_rule("ppl"))  # the policy's own statistics: packs
