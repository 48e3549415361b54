"""The report's plane figure and token viewer do work bounded by what they show, not by N:
counted in points drawn and rows built (no wall-clock asserts)."""

import json

import numpy as np
import pytest

from qtune.report import plots, tokens
from qtune.report.collect import Run
from qtune.runs.atomic import atomic_write_json


def kinds_and_ok(n_clean=5000, n_noisy=40, n_nan=30):
    kinds = np.array(["clean"] * n_clean + ["noisy"] * n_noisy + ["duplicate"] * n_nan)
    ok = np.ones(kinds.size, dtype=bool)
    ok[-n_nan:] = False  # no scores: never drawn
    return kinds[np.random.default_rng(1).permutation(kinds.size)], ok[np.random.default_rng(1).permutation(kinds.size)]


def test_plane_points_caps_each_kind_and_keeps_rare_kinds_whole():
    kinds, ok = kinds_and_ok()
    pts = plots.plane_points(kinds, ok, max_per_kind=300)
    assert sorted(pts) == ["clean", "noisy"]  # the unscored duplicates are not drawn at all
    idx, total = pts["clean"]
    assert (idx.size, total) == (300, 5000)
    assert np.all(np.diff(idx) > 0) and np.all(kinds[idx] == "clean") and ok[idx].all()
    noisy, total = pts["noisy"]
    assert (noisy.size, total) == (40, 40)
    again = plots.plane_points(kinds, ok, max_per_kind=300)
    assert np.array_equal(again["clean"][0], idx)  # the same figure every time
    assert plots.plane_points(None, ok, 10_000)["item"][0].size == int(ok.sum())


@pytest.fixture
def plane_run(tmp_path):
    kinds, ok = kinds_and_ok()
    rng = np.random.default_rng(0)
    ppl = np.where(ok, rng.uniform(1, 50, kinds.size), np.nan)
    np.savez(tmp_path / "scores.npz", ppl=ppl, entropy=rng.uniform(0, 3, kinds.size), kind=kinds)
    return Run(path=tmp_path, summary={"seed": 0, "epochs_detail": [{"alpha": 0.2}]}, config={})


def test_plot_plane_draws_at_most_the_cap_per_kind(plane_run, tmp_path, monkeypatch):
    drawn = []
    scatter = plots.plt.Axes.scatter
    monkeypatch.setattr(
        plots.plt.Axes, "scatter", lambda ax, x, y, **kw: drawn.append(len(x)) or scatter(ax, x, y, **kw)
    )
    path = plots.plot_plane("t", plane_run, tmp_path, max_per_kind=250)
    assert path.is_file()
    assert sorted(drawn) == [40, 250]
    drawn.clear()
    plots.plot_plane("t", plane_run, tmp_path, max_per_kind=10**6)
    assert sorted(drawn) == [40, 5000]


def _run(tmp_path, n):
    (tmp_path / "plans").mkdir()
    return Run(path=tmp_path, summary={"train_samples_total": n, "seed": 0}, config={})


def test_sample_plan_rows_built_only_for_shown_rows(tmp_path, monkeypatch):
    n = 20_000
    run = _run(tmp_path, n)
    ids = np.random.default_rng(0).permutation(n)[: n // 3]
    atomic_write_json(tmp_path / "plans" / "epoch_004.json", {"epoch": 4, "sample_ids": ids.tolist(), "weights": None})
    built = []
    make = tokens._sample_row
    monkeypatch.setattr(tokens, "_sample_row", lambda i, kept: built.append(i) or make(i, kept))
    epoch, rows, total = tokens.plan_rows(run, max_rows=80)
    assert (epoch, len(rows), total, len(built)) == (4, 80, n, 80)
    kept = set(ids.tolist())
    assert rows == [{"sample_id": i, "response": None, "kept": i in kept} for i in range(80)]
    built.clear()
    assert len(tokens.plan_rows(run)[1]) == n == len(built)  # no limit: every row, as before


def test_token_plan_rows_decoded_only_for_shown_rows(tmp_path, monkeypatch):
    run = _run(tmp_path, 3000)
    rows = [{"sample_id": i, "response": [3, 4, 5], "kept": [3, 5] if i % 2 else []} for i in range(3000)]
    data = {"epoch": 2, "coordinates": "label positions", "rows": rows}
    atomic_write_json(tmp_path / "plans" / "tokens_epoch_002.json", data)

    class Counting(json.JSONDecoder):
        calls = 0

        def raw_decode(self, s, idx=0):
            Counting.calls += 1
            return super().raw_decode(s, idx)

    monkeypatch.setattr(tokens, "_DECODER", Counting())
    epoch, shown, total = tokens.plan_rows(run, max_rows=7)
    assert (epoch, shown, total, Counting.calls) == (2, rows[:7], 3000, 7)
    page = tokens.write_tokens_html({"t": [run]}, tmp_path, max_rows=5).read_text()
    assert page.count("<div class='row'") == 5 and "first 5 of 3000 planned rows" in page


def test_empty_sample_plan(tmp_path):
    run = _run(tmp_path, 10)
    (tmp_path / "plans" / "epoch_000.json").write_text(json.dumps({"epoch": 0, "sample_ids": []}))
    epoch, rows, total = tokens.plan_rows(run, max_rows=3)
    assert (epoch, total) == (0, 10) and [r["kept"] for r in rows] == [False] * 3
