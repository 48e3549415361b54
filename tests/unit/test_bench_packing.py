"""scripts/bench_packing.py --quick: every variant runs, and packed and padded train the same data."""

import json

import numpy as np
from script_module import load_script


def test_lengths_spread_within_bounds_and_split_prompt_and_response():
    bench = load_script("bench_packing")
    prompt, response = bench.sft_lengths(2000, 1000, 60.0, 90.0, 1.0, seed=1)
    total = prompt + response
    assert total.min() >= 20 and total.max() == 1000  # a log-normal tail reaches the cap
    assert (prompt >= 10).all() and (response >= 10).all()
    # log-normal: the median near the medians' sum, the mean well above it (a long right tail)
    assert 120 < np.median(total) < 200 and total.mean() > 1.2 * np.median(total)


def test_quick_run_writes_every_variant_and_both_layouts_train_the_same_tokens(tmp_path, capsys):
    out = tmp_path / "bench_packing.json"
    results = load_script("bench_packing").main(["--quick", "--json", str(out)])
    (tiny,) = results
    assert [(r["strategy"], r["head"], r["attention"]) for r in tiny["rows"]] == [
        (s, h, a) for s in ("full", "qtuning") for h in ("full", "response") for a in ("sdpa", "sdpa_segments")
    ]
    padded, packed = tiny["layout"]["padded"], tiny["layout"]["packed"]
    samples = tiny["data"]["samples"]
    assert padded["samples"] == packed["samples"] == samples
    assert padded["tokens"] == packed["tokens"]  # the same samples, no token lost or cut
    assert packed["slots"] < padded["slots"]  # packing removes padding
    assert padded["padding_share"] == 1 - padded["tokens"] / padded["slots"]
    for row in tiny["rows"]:
        pad, pack = row["padded_counters"], row["packed_counters"]
        assert pad["samples_seen"] == pack["samples_seen"] == samples
        if row["strategy"] == "full":  # every sample's response, once, on both layouts
            assert pad["loss_tokens"] == pack["loss_tokens"] > 0
            assert pad["forward_tokens"] == pack["forward_tokens"] == padded["tokens"]
            assert pad["samples_trained"] == pack["samples_trained"] == samples
        else:  # Q-Tuning scores every token, then trains a part of the samples
            assert pad["scoring_tokens"] == pack["scoring_tokens"] == padded["tokens"]
            assert 0 < pack["samples_trained"] < samples and 0 < pad["samples_trained"] < samples
        assert len(row["padded_times_s"]) == len(row["packed_times_s"]) == 1
        assert row["speedup"] == row["packed_tokens_per_s"] / row["padded_tokens_per_s"]
    written = json.loads(out.read_text())
    assert written["models"][0]["rows"] == tiny["rows"]
    assert written["target"] == {"speedup": 1.5, "where_padding_share_at_least": 0.4}
    assert "speed-up" in capsys.readouterr().out


def test_unknown_model_is_refused_by_flag():
    import pytest

    with pytest.raises(ValueError, match="--models"):
        load_script("bench_packing").main(["--quick", "--models", "gpt9"])
