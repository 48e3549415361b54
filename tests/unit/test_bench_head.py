"""scripts/bench_head.py runs on the tiny Llama: both heads, both steps, identical statistics."""

import json

from script_module import load_script


def test_a_small_run_writes_every_row(tmp_path, capsys):
    out = tmp_path / "bench_head.json"
    args = ["--models", "tiny_llama", "--items", "2", "--length", "24", "--response", "4"]
    results = load_script("bench_head").main(
        args + ["--repeats", "1", "--warmup", "0", "--backend", "torch", "--json", str(out)]
    )
    (tiny,) = results
    assert [(r["head"], r["mode"]) for r in tiny["rows"]] == [
        ("plain", "score"), ("plain", "train"), ("fused", "score"), ("fused", "train")
    ]  # fmt: skip
    assert all(r["full_ms"] > 0 and r["response_only_ms"] > 0 for r in tiny["rows"])
    assert max(tiny["max_abs_diff"].values()) < 1e-5
    assert json.loads(out.read_text())["models"][0]["rows"] == tiny["rows"]
    assert "resp-only ms" in capsys.readouterr().out
