"""scripts/budget_table.py compares each point with full, full at the same budget and the
clean-only oracle by Welch's t-test, and scales wrong-answer tokens by full's: checked on
hand-made summaries against scipy and hand arithmetic."""

import json
from pathlib import Path

import pytest
from scipy import stats
from script_module import load_script


def _load():
    return load_script("budget_table")


def _point(level: Path, name: str, ems, wrong, flops=None):
    for seed, (e, w) in enumerate(zip(ems, wrong)):
        d = level / "sft" / name / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(
            json.dumps({"eval": {"exact_match": e}, "wrong_tokens_trained": w, "flops_vs_full": flops})
        )


def test_rows_compare_against_full_the_same_budget_and_the_oracle(tmp_path):
    bt = _load()
    _point(tmp_path, "full-same_epochs-e9", [0.90, 0.92, 0.94], [100, 100, 100])
    _point(tmp_path, "full-clean_only-same_epochs-e9", [0.97, 0.98, 0.96], [0, 0, 0])
    _point(tmp_path, "full-budget0.5-e9", [0.88, 0.89, 0.90], [50, 50, 50], 0.5)
    _point(tmp_path, "denoise-keep0.5-budget0.5-e9", [0.93, 0.95, 0.94], [20, 30, 25], 0.499)
    ordered = bt.rows(bt.load(tmp_path))
    table = {r["point"]: r for r in ordered}
    assert [r["point"] for r in ordered] == [
        "full-same_epochs-e9",
        "full-clean_only-same_epochs-e9",
        "full-budget0.5-e9",
        "denoise-keep0.5-budget0.5-e9",
    ]
    d = table["denoise-keep0.5-budget0.5-e9"]
    assert d["strategy"] == "denoise" and d["budget"] == 0.5 and d["seeds"] == 3
    assert d["em_mean"] == pytest.approx(0.94) and d["em_std"] == pytest.approx(0.01)
    p = stats.ttest_ind([0.93, 0.95, 0.94], [0.88, 0.89, 0.90], equal_var=False).pvalue
    assert d["vs_full_at_budget"] == f"+0.050 (p = {p:.2g}{' *' if p < 0.05 else ''})"
    assert d["vs_full"].startswith("+0.020") and d["vs_oracle"].startswith("-0.030")
    assert d["wrong_tokens_vs_full"] == pytest.approx(0.25)
    assert d["flops_vs_full"] == pytest.approx(0.499)
    full = table["full-same_epochs-e9"]
    assert full["vs_full"] == "—" and full["flops_vs_full"] == 1.0
    md = bt.markdown(ordered)
    assert "| denoise | 0.5 | 3 | 0.940 ± 0.010 |" in md and "| 0.25 |" in md


def test_a_level_without_full_is_refused_by_path(tmp_path):
    bt = _load()
    _point(tmp_path, "random-keep0.5-budget0.5-e9", [0.9, 0.8], [1, 1])
    with pytest.raises(SystemExit, match="full-same_epochs-e<N>"):
        bt.load(tmp_path)
