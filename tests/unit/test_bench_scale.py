"""scripts/bench_scale.py at a small size: the sampler and HF-state tables (the plans and core
tables come from their own scripts, tested beside them)."""

from script_module import load_script


def test_hf_state_stays_flat_while_plans_stay_in_memory(tmp_path):
    bench = load_script("bench_scale")
    rows = bench.hf_state_rows(2000, epochs=6)
    assert [r["plans_in_memory"] for r in rows] == [1, 2, 3, 4, 5, 6]  # a user still reads them all
    sizes = [r["state_mb"] for r in rows[1:]]
    assert max(sizes) - min(sizes) <= 0.01 * max(sizes)  # but checkpoints do not grow with them


def test_main_writes_every_asked_table(tmp_path):
    import json

    bench = load_script("bench_scale")
    out = tmp_path / "scale.json"
    bench.main(["--sizes", "1000", "--repeats", "1", "--parts", "sampler", "hf_state", "--json", str(out)])
    data = json.loads(out.read_text())
    assert set(data) == {"meta", "sampler", "hf_state"}
    assert data["sampler"][0]["n"] == 1000 and len(data["hf_state"]) == 10
