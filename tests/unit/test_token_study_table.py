"""scripts/token_study_table.py on hand-made summaries: means, sample std, Welch p (against the
closed form of Student's t with 4 degrees of freedom), FLOPs, token keep, wrong tokens and the
reference's cost relative to full, worked by hand."""

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from script_module import load_script


def _run(d: Path, strategy: dict, summary: dict) -> None:
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"strategy": strategy["name"], "epochs": 9, **summary}))
    OmegaConf.save(OmegaConf.create({"data": {"name": "embedded"}, "strategy": strategy}), d / "config.yaml")


def _point(out: Path, name: str, strategy: dict, ems, **per_seed) -> None:
    for seed, em in enumerate(ems):
        summary = {"seed": seed, "eval": {"exact_match": em}}
        summary.update({k: v[seed] for k, v in per_seed.items()})
        _run(out / "sft" / name / f"seed{seed}", strategy, summary)


@pytest.fixture
def study(tmp_path):
    ref = tmp_path / "reference" / "sft" / "random-clean_ref-keep0.1-same_epochs-e9"
    for seed, em in enumerate((0.6, 0.7, 0.8)):
        _run(
            ref / f"seed{seed}",
            {"name": "random", "keep_ratio": 0.1},
            {"eval": {"exact_match": em}, "flops_estimate": 10.0},
        )
    _point(
        tmp_path,
        "full-same_epochs-e9",
        {"name": "full"},
        [0.90, 0.92, 0.94],
        flops_estimate=[100.0] * 3,
        wrong_tokens_trained=[200] * 3,
        token_keep_ratio=[1.0] * 3,
    )
    rho1 = {"name": "random", "keep_ratio": 0.25, "token": {"name": "rho1", "keep_ratio": 0.5, "scope": "batch"}}
    _point(
        tmp_path,
        "random-rho1-keep0.25-same_epochs-e9",
        rho1,
        [0.80, 0.84, 0.82],
        flops_estimate=[40.0, 42.0, 44.0],
        wrong_tokens_trained=[40, 50, 60],
        token_keep_ratio=[0.50, 0.52, 0.54],
        reference=[
            {"source": "path", "training_flops": f, "run_dir": str(ref / f"seed{s}")}
            for s, f in enumerate((8.0, 10.0, 12.0))
        ],
    )
    tc = {"name": "full", "token": {"name": "tokencleaning", "keep_ratio": 0.6, "scope": "global"}}
    _point(
        tmp_path,
        "full-tokencleaning-same_epochs-e9",
        tc,
        [0.91, 0.93],
        flops_estimate=[105.0, 105.0],
        wrong_tokens_trained=[100, 120],
        token_keep_ratio=[0.6, 0.6],
        reference=[
            {
                "source": "file",
                "file_flops": 5.0,
                "file_reference": {"training_flops": 10.0, "run_dir": str(ref / f"seed{s}")},
            }
            for s in range(2)
        ],
    )
    _point(
        tmp_path,
        "full-dft-same_epochs-e9",
        {"name": "full", "token": {"name": "dft"}},
        [0.5],
        reference=[{"source": "self"}],
    )
    return tmp_path


def test_rows_against_hand_worked_numbers(study):
    tt = load_script("token_study_table")
    table = tt.rows(tt.load(study))
    assert [(r["sample"], r["token"]) for r in table] == [
        ("full", "—"),
        ("full", "tokencleaning 0.6 global"),
        ("full", "dft"),
        ("random 0.25", "rho1 0.5 batch"),
    ]
    full, tc, dft, rho1 = table
    assert (full["em_mean"], full["em_std"]) == (pytest.approx(0.92), pytest.approx(0.02))
    assert math.isnan(full["delta_vs_full"]) and full["reference"] is None
    # random x rho1: mean 0.82, std 0.02; Welch t = -0.10 / sqrt(2 * 0.02^2 / 3), 4 d.o.f.
    assert (rho1["em_mean"], rho1["em_std"], rho1["delta_vs_full"]) == (
        pytest.approx(0.82),
        pytest.approx(0.02),
        pytest.approx(-0.10),
    )
    t = 0.10 / math.sqrt(2 * 0.02**2 / 3)
    x = t / math.sqrt(4 + t * t)
    assert rho1["p_vs_full"] == pytest.approx(1 - x * (3 - x * x) / 2, rel=1e-9)  # ν = 4: closed form
    assert rho1["flops_vs_full"] == pytest.approx(0.42)
    assert rho1["token_keep_ratio"] == pytest.approx(0.52)
    assert rho1["wrong_tokens_vs_full"] == pytest.approx(0.25)
    assert (rho1["reference"], rho1["reference_training_vs_full"]) == ("path", pytest.approx(0.10))
    # the file reference: its training from the file's record, the file's cost already in FLOPs
    assert (tc["reference"], tc["reference_training_vs_full"]) == ("file", pytest.approx(0.10))
    assert (tc["delta_vs_full"], tc["p_vs_full"]) == (pytest.approx(0.0), pytest.approx(1.0))
    assert tc["flops_vs_full"] == pytest.approx(1.05) and tc["wrong_tokens_vs_full"] == pytest.approx(0.55)
    # one seed: a difference but no p; a self reference costs no training
    assert dft["delta_vs_full"] == pytest.approx(-0.42) and math.isnan(dft["p_vs_full"])
    assert dft["reference"] == "self" and math.isnan(dft["reference_training_vs_full"])
    assert math.isnan(dft["token_keep_ratio"])  # runs that did not record it


def test_markdown_and_the_reference_note(study, capsys):
    tt = load_script("token_study_table")
    assert tt.main([str(study), "--json", str(study / "t.json")]) == 0
    md = capsys.readouterr().out
    rho1_line = next(line for line in md.splitlines() if "rho1" in line)
    cells = [c.strip() for c in rho1_line.strip("|").split("|")]
    t = 0.10 / math.sqrt(2 * 0.02**2 / 3)
    x = t / math.sqrt(4 + t * t)
    p = 1 - x * (3 - x * x) / 2
    assert cells == [
        "random 0.25",
        "rho1 0.5 batch",
        "3",
        "0.820 ± 0.020",
        f"-0.100 (p = {p:.2g} *)",
        "0.42",
        "0.52",
        "0.25",
        "path",
        "0.100",
    ]
    # the three reference runs: EM 0.7 ± 0.1, training 10 / 100 of full's FLOPs
    note = next(line for line in md.splitlines() if line.startswith("- reference"))
    assert "seeds: 3" in note and "0.700 ± 0.100" in note and "0.100 × the FLOPs of full" in note
    assert len(json.loads((study / "t.json").read_text())) == 4


def test_a_study_without_full_is_refused(tmp_path):
    tt = load_script("token_study_table")
    _point(tmp_path, "full-dft-same_epochs-e9", {"name": "full", "token": {"name": "dft"}}, [0.5])
    with pytest.raises(SystemExit, match="no finished full run"):
        tt.load(tmp_path)
