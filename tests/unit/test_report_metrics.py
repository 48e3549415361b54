"""qtune-report shows every eval metric a run has, and ``--metric`` picks the headline."""

import json
import statistics

import pytest
from omegaconf import OmegaConf

from qtune.cli.report import build_report, main

EVALS = {  # (strategy, seed): (exact match, token F1, harness exact match)
    ("full", 0): (0.50, 0.70, 0.40),
    ("full", 1): (0.60, 0.80, 0.50),
    ("random", 0): (0.40, 0.75, 0.30),
    ("random", 1): (0.30, 0.65, 0.20),
}


@pytest.fixture
def runs(tmp_path):
    for (strategy, seed), (em, f1, harness) in EVALS.items():
        d = tmp_path / "runs" / f"{strategy}_{seed}"
        d.mkdir(parents=True)
        summary = {
            "strategy": strategy,
            "seed": seed,
            "epochs": 2,
            "flops_estimate": 100.0 if strategy == "full" else 50.0,
            "train_time_s": 1.0,
            "realised_keep_ratio": 1.0,
            "eval": {
                "loss": 1.0 + seed,
                "exact_match": em,
                "token_f1": f1,
                "num_items": 10,
                "lm_eval": {"qtune_embedded_chat": {"exact_match": harness, "exact_match_stderr": 0.1}},
            },
        }
        (d / "summary.json").write_text(json.dumps(summary))
        OmegaConf.save(
            OmegaConf.create({"data": {"name": "embedded"}, "strategy": {"name": strategy}}), d / "config.yaml"
        )  # the file qtune-train writes (no .hydra/)
    return tmp_path / "runs"


def test_every_eval_metric_is_a_column(runs, tmp_path):
    rows = {r["strategy"]: r for r in build_report([runs], tmp_path / "out")["rows"]}
    rand = rows["random"]
    assert rand["metric"] == "exact_match" and rand["eval_mean"] == pytest.approx(0.35)
    assert rand["metrics"]["token_f1"]["mean"] == pytest.approx(0.70)
    assert rand["metrics"]["token_f1"]["std"] == pytest.approx(statistics.stdev([0.75, 0.65]))
    assert rand["metrics"]["qtune_embedded_chat/exact_match"]["mean"] == pytest.approx(0.25)
    assert "num_items" not in rand["metrics"]
    assert not any(k.endswith("_stderr") for k in rand["metrics"])
    md = (tmp_path / "out" / "report.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| strategy"))
    for column in ("exact_match (mean ± std)", "| loss |", "| token_f1 |", "| qtune_embedded_chat/exact_match |"):
        assert column in head + " |"


def test_metric_option_sets_the_headline(runs, tmp_path):
    rows = {
        r["strategy"]: r for r in build_report([runs], tmp_path / "o", metric="qtune_embedded_chat/exact_match")["rows"]
    }
    assert rows["random"]["metric"] == "qtune_embedded_chat/exact_match"
    assert rows["random"]["eval_mean"] == pytest.approx(0.25)
    assert rows["random"]["delta_vs_full"] == pytest.approx(0.25 - 0.45)
    main([str(runs), "--out", str(tmp_path / "cli"), "--metric", "token_f1"])
    assert "token_f1 (mean ± std)" in (tmp_path / "cli" / "report.md").read_text()
    with pytest.raises(SystemExit, match="--metric=bleu: no run has it.*token_f1"):
        build_report([runs], tmp_path / "bad", metric="bleu")
    assert not (tmp_path / "bad").exists()


def test_the_measured_token_keep_ratio_is_a_column_once_runs_record_it(runs, tmp_path):
    build_report([runs], tmp_path / "before")
    assert "token keep" not in (tmp_path / "before" / "report.md").read_text()  # older runs: no column
    for name, ratio in (("random_0", 0.5), ("random_1", 0.6), ("full_0", 1.0)):
        path = runs / name / "summary.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"token_keep_ratio": ratio}))
    rows = {r["strategy"]: r for r in build_report([runs], tmp_path / "after")["rows"]}
    assert rows["random"]["token_keep_ratio"] == pytest.approx(0.55)
    assert rows["full"]["token_keep_ratio"] == 1.0  # full_1 recorded none: the mean of those that did
    lines = (tmp_path / "after" / "report.md").read_text().splitlines()
    head = next(line for line in lines if line.startswith("| strategy")).split(" | ")
    random_row = next(line for line in lines if line.startswith("| random")).split(" | ")
    assert random_row[head.index("token keep")] == "0.5500"


def test_full_with_a_token_rule_is_compared_with_plain_full_not_used_as_it(runs, tmp_path):
    for seed, em in enumerate((0.70, 0.80)):  # sorts before plain full ('{"token"' < '{}')
        d = runs / f"full_dft_{seed}"
        d.mkdir()
        summary = {"strategy": "full", "seed": seed, "epochs": 2, "flops_estimate": 130.0, "eval": {"exact_match": em}}
        (d / "summary.json").write_text(json.dumps(summary))
        cfg = {"data": {"name": "embedded"}, "strategy": {"name": "full", "token": {"name": "dft"}}}
        OmegaConf.save(OmegaConf.create(cfg), d / "config.yaml")
    rows = build_report([runs], tmp_path / "out")["rows"]
    dft = next(r for r in rows if r["knobs"].get("token"))
    rand = next(r for r in rows if r["strategy"] == "random")
    assert rand["rel_flops"] == pytest.approx(0.5) and dft["rel_flops"] == pytest.approx(1.3)
    assert dft["delta_vs_full"] == pytest.approx(0.75 - 0.55)


def test_a_composed_point_names_its_token_rule_even_alone(runs, tmp_path):
    for seed in range(2):
        path = runs / f"random_{seed}" / "config.yaml"
        cfg = OmegaConf.load(path)
        cfg.strategy.token = {"name": "ppl", "keep_ratio": 0.5}
        OmegaConf.save(cfg, path)
    rows = {r["strategy"]: r for r in build_report([runs], tmp_path / "out")["rows"]}
    assert rows["random"]["ratios"] == "token={keep_ratio:0.5,name:ppl}"
