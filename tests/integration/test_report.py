"""qtune-report on tiny runs made here, and scripts/run_grid.py's planning and resume logic."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from omegaconf import OmegaConf
from conftest import REPO
from script_module import load_script

from qtune.cli.report import build_report, main
from qtune.report.collect import find_runs
from qtune.report.plots import pareto_front

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUNS = [
    ("full", 0, []),
    ("full", 1, []),
    ("random", 0, ["strategy.keep_ratio=0.5"]),
    ("random", 1, ["strategy.keep_ratio=0.5"]),
    ("qtuning", 0, ["export_plan=true"]),
]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """Five 2-epoch digits runs, each with the config file a Hydra launch would have saved."""
    from conftest import FAST, compose

    from qtune.train import run

    root = tmp_path_factory.mktemp("runs")
    for strategy, seed, extra in RUNS:
        run_dir = root / f"{strategy}_{seed}"
        cfg = compose(
            FAST
            + [f"run_dir={run_dir}", "experiment=digits", "epochs=2", f"strategy={strategy}", f"seed={seed}", *extra]
        )
        run(cfg)
        (run_dir / ".hydra").mkdir()
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return root


def _summaries(root: Path, strategy: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob(f"{strategy}_*/summary.json"))]


def test_table_numbers_match_the_summaries(runs_root, tmp_path):
    out = tmp_path / "report"
    rows = {r["strategy"]: r for r in build_report([runs_root], out)["rows"]}
    assert set(rows) == {"full", "random", "qtuning"}
    full, rand = _summaries(runs_root, "full"), _summaries(runs_root, "random")
    acc = [s["eval"]["accuracy"] for s in rand]
    flops_full = statistics.mean(s["flops_estimate"] for s in full)
    time_full = statistics.mean(s["train_time_s"] for s in full)
    r = rows["random"]
    assert r["seeds"] == 2 and r["seed_ids"] == [0, 1] and r["ratios"] == "keep_ratio=0.5"
    assert r["eval_mean"] == pytest.approx(statistics.mean(acc))
    assert r["eval_std"] == pytest.approx(statistics.stdev(acc))
    rel = statistics.mean(s["flops_estimate"] for s in rand) / flops_full
    assert r["rel_flops"] == pytest.approx(rel)
    assert r["rel_time"] == pytest.approx(statistics.mean(s["train_time_s"] for s in rand) / time_full)
    assert r["realised_keep_ratio"] == pytest.approx(statistics.mean(s["realised_keep_ratio"] for s in rand))
    assert rows["full"]["rel_flops"] == pytest.approx(1.0)
    assert rows["qtuning"]["seeds"] == 1 and rows["qtuning"]["eval_std"] == 0.0
    md = (out / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| random |"))
    assert f"{statistics.mean(acc):.4f} ± {statistics.stdev(acc):.4f}" in line
    assert f"| {rel:.4f} |" in line
    assert "## digits" in md and "FLOPs vs full" in md
    acc_full = [s["eval"]["accuracy"] for s in full]
    assert r["delta_vs_full"] == pytest.approx(statistics.mean(acc) - statistics.mean(acc_full))
    assert math.isnan(rows["full"]["delta_vs_full"]) and math.isnan(rows["qtuning"]["p_vs_full"])


def test_welch_p_value_against_the_textbook_formula():
    """Welch's t and Welch-Satterthwaite degrees of freedom by hand, p from Student's t."""
    from scipy import stats

    from qtune.report.tables import welch

    a, b = [0.91, 0.93, 0.92, 0.95, 0.90], [0.88, 0.86, 0.90, 0.87]
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    delta, p = welch(a, b)
    assert delta == pytest.approx(statistics.mean(a) - statistics.mean(b))
    assert p == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert p < 0.05 and welch(a, a)[1] == pytest.approx(1.0)
    assert math.isnan(welch([0.9], b)[1]) and math.isnan(welch([0.5, 0.5], [0.5, 0.5])[1])


def test_every_figure_is_a_valid_png(runs_root, tmp_path):
    files = build_report([runs_root], tmp_path)["files"]
    pngs = [p for p in files if p.suffix == ".png"]
    assert {p.name for p in pngs} == {"pareto_digits.png", "keep_ratio_digits.png", "plane_digits.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_SIGNATURE
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[2] in (3, 4) and min(img.shape[:2]) > 100
        assert f"]({p.name})" in (tmp_path / "report.md").read_text()
    page = (tmp_path / "tokens.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "class='row'" in page and "qtuning" in page


def test_run_dirs_and_parent_dirs_find_each_run_once(runs_root, tmp_path):
    runs = find_runs([runs_root, runs_root / "full_0"])
    assert len(runs) == len(RUNS)
    main([str(runs_root / "full_0"), str(runs_root / "random_0"), "--out", str(tmp_path)])
    assert json.loads((tmp_path / "report.json").read_text())["rows"][1]["rel_flops"] < 0.6
    with pytest.raises(FileNotFoundError):
        find_runs([tmp_path / "missing"])


def test_pareto_front_keeps_only_undominated_points():
    xy = [(1.0, 0.9), (0.5, 0.85), (0.6, 0.8), (0.3, 0.85), (0.2, 0.5)]
    assert pareto_front(xy) == [4, 3, 0]


def test_tokens_html_decodes_embedded_items(tmp_path):
    """A hand-made embedded run: token text, kept / masked spans and the wrong-answer marks."""
    from qtune.data.embedded import build_embedded_task

    data = {"num_train": 40, "num_eval": 5, "seed": 1}
    bundle = build_embedded_task(data)
    noisy = next(i for i, m in enumerate(bundle.train_meta) if m["kind"] == "noisy")
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "plans").mkdir()
    OmegaConf.save(
        OmegaConf.create({"data": {"name": "embedded", **data}, "strategy": {"name": "qtuning"}}),
        run_dir / ".hydra" / "config.yaml",
    )
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "strategy": "qtuning",
                "seed": 0,
                "epochs": 1,
                "task": "sft",
                "train_samples_total": 40,
                "eval": {"exact_match": 0.0},
                "data_info": {"config": bundle.info["config"]},
            }
        )
    )
    labels = bundle.train.labels[noisy].tolist()
    response = [j for j in range(len(labels) - 1) if labels[j + 1] != -100]
    rows = [
        {"sample_id": noisy, "response": response, "kept": response[:1]},
        {"sample_id": 0, "response": [5], "kept": []},
    ]
    (run_dir / "plans" / "tokens_epoch_000.json").write_text(json.dumps({"epoch": 0, "rows": rows}))
    build_report([run_dir], tmp_path / "out")
    page = (tmp_path / "out" / "tokens.html").read_text()
    first = bundle.tokenizer.decode([bundle.train.input_ids[noisy][1]])
    assert f"<span class='t prompt'>{first}</span>" in page
    assert "token-pruned: 1/" in page and "dropped: 0/1" in page
    assert "wrong" in page and "true answer" in page


def _load_run_grid():
    return load_script("run_grid")


def test_run_grid_plans_deterministic_points_and_budgets(tmp_path):
    rg = _load_run_grid()
    pts = rg.plan_grid(
        "digits",
        ["full", "random", "qtuning", "infobatch"],
        ["0.25", "0.5x0.7"],
        [0, 1],
        ["same_epochs", "same_steps"],
        tmp_path,
        epochs=4,
    )
    names = {p.run_dir.relative_to(tmp_path).as_posix() for p in pts}
    assert "digits/full-same_epochs-e4/seed1" in names
    assert "digits/random-keep0.25-same_steps-e16/seed0" in names
    assert "digits/qtuning-s0.5xt0.7-same_steps-e8/seed0" in names
    assert not any(n.startswith("digits/random-keep0.5") for n in names)  # SxT is qtuning's only
    assert len(pts) == 2 + 4 + 8 + 4  # full per seed; random, infobatch 1 ratio; qtuning 2 (x 2 budgets x 2 seeds)
    ib = next(p for p in pts if "infobatch" in str(p.run_dir))
    assert "strategy.prune_ratio=0.75" in ib.overrides and "experiment=digits" in ib.overrides


@pytest.mark.parametrize("task,config", [("sft", "train"), ("digits", "experiment/digits")])
def test_run_grid_takes_a_tasks_default_epochs_from_its_config(task, config, tmp_path):
    """Without --epochs a point runs what ``qtune-train`` would: the epochs its yaml sets."""
    from omegaconf import OmegaConf

    rg = _load_run_grid()
    conf = REPO / "conf" / f"{config}.yaml"
    want = OmegaConf.load(conf).epochs
    (point,) = rg.plan_grid(task, ["full"], ["0.5"], [0], ["same_epochs"], tmp_path)
    assert f"epochs={want}" in point.overrides
    assert point.run_dir.parent.name == f"full-same_epochs-e{want}"


def test_run_grid_runs_every_strategy_full_included_under_a_flops_budget(tmp_path):
    rg = _load_run_grid()
    pts = rg.plan_grid("sft", ["full", "random", "denoise"], ["0.5"], [0], ["0.25", "0.5"], tmp_path, epochs=9)
    names = sorted(p.run_dir.relative_to(tmp_path).as_posix() for p in pts)
    assert names == [
        "sft/denoise-keep0.5-budget0.25-e9/seed0",
        "sft/denoise-keep0.5-budget0.5-e9/seed0",
        "sft/full-budget0.25-e9/seed0",
        "sft/full-budget0.5-e9/seed0",
        "sft/full-same_epochs-e9/seed0",  # the reference every budget is a share of
        "sft/random-keep0.5-budget0.25-e9/seed0",
        "sft/random-keep0.5-budget0.5-e9/seed0",
    ]
    full_half = next(p for p in pts if p.run_dir.parent.name == "full-budget0.5-e9")
    assert "budget=0.5" in full_half.overrides and "epochs=9" in full_half.overrides
    with pytest.raises(ValueError, match="unknown budget '1.5'"):
        rg.plan_grid("sft", ["random"], ["0.5"], [0], ["1.5"], tmp_path)
    with pytest.raises(SystemExit):  # the command line refuses it before anything runs
        rg.main(["--task", "sft", "--strategies", "random", "--budgets", "cheap", "--out", str(tmp_path)])


def test_run_grid_skips_finished_points_and_resumes_from_checkpoints(tmp_path):
    rg = _load_run_grid()
    pts = rg.plan_grid("digits", ["full", "random"], ["0.5"], [0, 1], ["same_epochs"], tmp_path)
    calls = []

    def fake_runner(point):
        calls.append(point)
        point.run_dir.mkdir(parents=True, exist_ok=True)
        (point.run_dir / "summary.json").write_text("{}")
        return 0

    (pts[0].run_dir).mkdir(parents=True)
    (pts[0].run_dir / "summary.json").write_text("{}")  # finished
    (pts[1].run_dir / "checkpoints").mkdir(parents=True)
    (pts[1].run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")  # interrupted
    dry = rg.run_grid(pts, runner=fake_runner, dry_run=True, log=lambda m: None)
    assert calls == [] and len(dry["planned"]) == 3 and len(dry["skipped"]) == 1
    done = rg.run_grid(pts, runner=fake_runner, log=lambda m: None)
    assert len(done["ran"]) == 3 and [c.run_dir for c in calls] == [p.run_dir for p in pts[1:]]
    assert f"ckpt_path={pts[1].run_dir / 'checkpoints' / 'last.ckpt'}" in calls[0].overrides
    again = rg.run_grid(pts, runner=fake_runner, log=lambda m: None)
    assert len(again["skipped"]) == 4 and len(calls) == 3


def test_run_grid_tags_variants_and_shards_cover_the_grid(tmp_path):
    rg = _load_run_grid()
    pts = rg.plan_grid(
        "digits",
        ["random"],
        ["0.3", "0.5"],
        [0, 1, 2],
        ["same_epochs"],
        tmp_path,
        extra=["strategy.static=true"],
        tag="static",
    )
    assert all(p.run_dir.parent.name.startswith("random-static-keep") for p in pts)
    assert all("strategy.static=true" in p.overrides for p in pts)
    assert rg._without_workers(["--task", "digits", "--workers", "3", "--seeds", "2", "--workers=4"]) == [
        "--task",
        "digits",
        "--seeds",
        "2",
    ]
    shards = [pts[i::3] for i in range(3)]
    assert sorted(p.run_dir for s in shards for p in s) == sorted(p.run_dir for p in pts)


def test_run_grid_in_process_matches_a_fresh_run_and_logs_failures(tmp_path):
    """Points run one after another in one process give what a fresh run of the same config
    gives (no state leaks from one point to the next), and save the config qtune-report reads."""
    from conftest import FAST, compose

    from qtune.train import run

    rg = _load_run_grid()
    pts = rg.plan_grid("digits", ["full", "random"], ["0.5"], [0], ["same_epochs"], tmp_path, epochs=2, extra=FAST)
    assert [rg.in_process_runner(p) for p in pts] == [0, 0]
    second = json.loads((pts[1].run_dir / "summary.json").read_text())
    saved = OmegaConf.load(pts[1].run_dir / ".hydra" / "config.yaml")
    assert saved.strategy.name == "random" and saved.strategy.keep_ratio == 0.5
    fresh = run(compose([*pts[1].overrides, f"run_dir={tmp_path / 'fresh'}"]))
    assert second["eval"] == fresh["eval"]
    n = second["train_samples_total"]
    assert second["samples_trained"] == fresh["samples_trained"] == 2 * round(0.5 * n)
    bad = rg.GridPoint(tmp_path / "bad", ["experiment=digits", "strategy=nope"])
    assert rg.in_process_runner(bad) == 1
    assert "nope" in (tmp_path / "bad" / "grid.log").read_text()


def test_variants_split_a_strategy_and_policies_read_as_letters(tmp_path):
    """Points of one strategy that differ in a non-ratio knob are separate variants (own line
    in the plots); a Q-Tuning policy is labelled Q1..Q4 as K/P/D letters."""
    from qtune.report.collect import Run, group_points

    def run(seed, **strategy):
        summary = {"strategy": strategy["name"], "seed": seed, "epochs": 3, "eval": {"accuracy": 0.5}}
        return Run(tmp_path / f"r{len(strategy)}{seed}", summary, {"data": {"name": "toy"}, "strategy": strategy})

    paper = {"q1": "drop", "q2": "prune", "q3": "drop", "q4": "keep"}
    no_q2 = {**paper, "q2": "drop"}
    runs = [
        run(0, name="qtuning", sample_ratio=0.25, policy=paper),
        run(0, name="qtuning", sample_ratio=0.5, policy=no_q2),
        run(0, name="random", keep_ratio=0.5, static=False),
        run(1, name="random", keep_ratio=0.5, static=True),
    ]
    pts = {(p.strategy, p.variant): p for p in group_points(runs)["toy"]}
    assert set(pts) == {
        ("qtuning", "policy=DPDK"),
        ("qtuning", "policy=DDDK"),
        ("random", "static=False"),
        ("random", "static=True"),
    }
    assert pts[("qtuning", "policy=DDDK")].label == "policy=DDDK, sample_ratio=0.5"


def test_plane_prefers_a_qtuning_run_with_the_papers_policy(tmp_path):
    from qtune.report.collect import Run
    from qtune.report.plots import plane_run

    def run(name, strategy, **cfg):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scores.npz").write_bytes(b"")
        return Run(tmp_path / name, {"strategy": strategy}, {"strategy": {"name": strategy, **cfg}})

    full = run("a_full", "full")
    drop_q2 = run("b_qt", "qtuning", policy={"q1": "drop", "q2": "drop", "q3": "drop", "q4": "keep"})
    paper = run("c_qt", "qtuning", policy={"q1": "drop", "q2": "prune", "q3": "drop", "q4": "keep"})
    assert plane_run([full, drop_q2, paper]) is paper
    assert plane_run([full, drop_q2]) is drop_q2
    assert plane_run([full]) is full


def test_the_report_asks_the_strategy_not_its_name(tmp_path):
    """A strategy the report has never heard of claims the plane, labels its own option and,
    declaring full_data, becomes the compute reference; an uninstalled one claims nothing."""
    from qtune.report.collect import Point, Run, reference_full
    from qtune.report.plots import plane_run
    from qtune.strategies import PruningStrategy, register_strategy
    from qtune.strategies.registry import _REGISTRY

    @register_strategy("plotter_for_test")
    class Plotter(PruningStrategy):
        @classmethod
        def plane_rank(cls, options):
            return 0

        @classmethod
        def format_option(cls, key, value):
            return f"<{value}>" if key == "shade" else None

    @register_strategy("everything_for_test")
    class Everything(PruningStrategy):
        full_data = True

    try:

        def run(name, strategy, **cfg):
            (tmp_path / name).mkdir()
            (tmp_path / name / "scores.npz").write_bytes(b"")
            return Run(tmp_path / name, {"strategy": strategy}, {"strategy": {"name": strategy, **cfg}})

        qt = run("a", "qtuning", policy={"q1": "drop", "q2": "drop", "q3": "drop", "q4": "keep"})
        mine = run("b", "plotter_for_test")  # ranks itself 0, before Q-Tuning with another policy
        unknown = run("c", "not_installed_anywhere")
        assert plane_run([qt, unknown, mine]) is mine
        assert plane_run([unknown, qt]) is qt
        everything = Point("t", "everything_for_test", {}, 3, [])
        full = Point("t", "full", {}, 3, [])
        other = Point("t", "plotter_for_test", {"shade": 2}, 3, [])
        assert reference_full(other, [everything, other]) is everything
        assert reference_full(other, [other]) is None
        assert reference_full(other, [full, other]) is full
        from qtune.report.collect import strategy_class

        assert strategy_class("plotter_for_test").format_option("shade", 2) == "<2>"
        assert strategy_class("not_installed_anywhere").plane_rank({}) is None
    finally:
        _REGISTRY.pop("plotter_for_test", None)
        _REGISTRY.pop("everything_for_test", None)


def test_run_grid_reports_a_point_stopped_by_a_signal_as_interrupted(tmp_path):
    """qtune-train exits 128 + the signal after saving last.ckpt; a child killed outright
    returns -signal. Either is 'interrupted' (resumed by the next call), not 'failed'."""
    rg = _load_run_grid()
    pts = rg.plan_grid("digits", ["full", "random"], ["0.5"], [0, 1], ["same_epochs"], tmp_path)
    codes = iter([128 + 15, -9, 1, 0])
    lines = []
    done = rg.run_grid(pts, runner=lambda point: next(codes), log=lines.append)
    assert [len(done[k]) for k in ("interrupted", "failed", "ran")] == [2, 1, 1]
    assert done["interrupted"] == [pts[0].run_dir, pts[1].run_dir]
    assert any("interrupted (signal 15)" in line for line in lines)
    assert any("interrupted (signal 9)" in line for line in lines)
