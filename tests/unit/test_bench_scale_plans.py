"""scripts/bench_scale_plans.py runs end to end at a small N and finds the plans equal."""

import json

from script_module import load_script


def test_bench_rows_and_json(tmp_path, capsys):
    bench = load_script("bench_scale_plans")
    out = tmp_path / "b.json"
    bench.main(["--sizes", "3001", "--repeats", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    labels = {r["plan"] for r in rows}
    assert {"qtuning level=epoch", "denoise", "seta (k-means)", "ccs (el2n)", "el2n (selection epoch)"} <= labels
    assert all(r["same"] and r["n"] == 3001 and r["new_s"] >= 0 and r["old_s"] >= 0 for r in rows)
    assert "| 3e+03 | denoise |" in capsys.readouterr().out
