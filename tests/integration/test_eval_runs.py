"""The generation eval in real runs: a JSONL run's summary and samples, ``eval.before``, and a
failing evaluation that leaves the model in place for ``qtune-eval``."""

import json

import pytest
from tiny_hf import ROWS, save_tiny_llama

from qtune.eval.metrics import normalize_answer
from qtune.train import run


def _jsonl_args(tmp_path, *extra):
    model_dir = save_tiny_llama(tmp_path / "model", chat_template=True)
    rows = [dict(r, group="chat" if "messages" in r else "alpaca") for r in ROWS]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(rows[i % 4]) for i in range(40)))
    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return [
        "model=hf",
        f"model.path={model_dir}",
        "data=jsonl",
        f"data.path={tmp_path / 'train.jsonl'}",
        f"data.eval_path={tmp_path / 'eval.jsonl'}",
        "batch_size=8",
        "optim.lr=3e-2",
        *extra,
    ]


def _plain_f1(pred: str, ref: str) -> float:  # an independent count of shared words
    p, r = pred.lower().split(), ref.lower().split()
    shared = sum(min(p.count(w), r.count(w)) for w in set(p))
    return 0.0 if not shared else 2 * shared / (len(p) + len(r))


def test_jsonl_run_reports_exact_match_and_f1_per_group(make_cfg, tmp_path):
    s = run(make_cfg(_jsonl_args(tmp_path, "epochs=8", "eval.before=true"), "run"))
    ev = s["eval"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval_samples.jsonl").open()]
    references = [r.get("output") or r["messages"][-1]["content"] for r in ROWS]
    assert [r["reference"] for r in rows] == references
    assert [r["group"] for r in rows] == ["alpaca", "alpaca", "chat", "alpaca"]
    em = [float(normalize_answer(r["prediction"]) == normalize_answer(r["reference"])) for r in rows]
    assert ev["exact_match"] == pytest.approx(sum(em) / 4)
    assert ev["token_f1"] == pytest.approx(sum(_plain_f1(r["prediction"], r["reference"]) for r in rows) / 4)
    assert ev["per_group"]["chat"]["n"] == 1 and ev["per_group"]["alpaca"]["n"] == 3
    assert ev["exact_match"] >= 0.75  # 40 steps over four rows: the model has learned them
    before = s["eval_before"]
    assert before["exact_match"] <= 0.25  # a random model
    assert (tmp_path / "run" / "eval_samples_before.jsonl").is_file()
    assert s["eval_delta"]["exact_match"] == pytest.approx(ev["exact_match"] - before["exact_match"])
    assert set(s["eval_delta"]) == {"exact_match", "token_f1"}


def test_failing_eval_keeps_the_model_and_qtune_eval_completes_the_run(make_cfg, tmp_path, monkeypatch):
    import qtune.eval.generation as ge
    from qtune.cli.eval import evaluate

    def broken(*a, **k):
        raise MemoryError("out of memory while decoding")

    monkeypatch.setattr(ge, "evaluate_generation", broken)
    with pytest.raises(RuntimeError, match=r"qtune-eval .*run") as err:
        run(make_cfg(_jsonl_args(tmp_path, "epochs=8"), "run"))
    run_dir = tmp_path / "run"
    assert "out of memory" in str(err.value)
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "qtune-eval" in summary["eval_error"] and "exact_match" not in summary["eval"]
    monkeypatch.undo()
    result = evaluate(run_dir, ["eval.max_items=3"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "eval_error" not in summary and summary["eval"]["num_items"] == 3
    assert summary["eval"]["exact_match"] == result["exact_match"] >= 2 / 3
    assert summary["eval"]["loss"] > 0  # the validation loss of training is kept
    assert json.loads((run_dir / "eval.json").read_text())["eval"] == result


def test_qtune_eval_refuses_a_directory_without_final(tmp_path):
    from qtune.cli.eval import main

    (tmp_path / "half").mkdir()
    with pytest.raises(SystemExit, match="no final/ model"):
        main([str(tmp_path / "half")])


def test_qtune_eval_refuses_harness_tasks_for_a_character_model_run(make_cfg, tmp_path):
    from omegaconf import OmegaConf

    from qtune.data.tokenizer import CharTokenizer
    from qtune.cli.eval import main

    run_dir = tmp_path / "tiny"
    (run_dir / "final").mkdir(parents=True)
    CharTokenizer().save(str(run_dir / "final"))
    OmegaConf.save(make_cfg([], "tiny"), run_dir / "config.yaml")
    with pytest.raises(SystemExit, match="character tokenizer"):
        main([str(run_dir), "eval.lm_eval.tasks=[qtune_embedded]"])


@pytest.mark.parametrize("override", ["data.path=other.jsonl", "data=digits", "+data.noise_fraction=0.5", "seed=3"])
def test_qtune_eval_of_a_run_refuses_anything_but_eval_keys(make_cfg, tmp_path, override):
    """A run's recorded results are its own: other data would be merged into them. Nothing is
    written, and the message says how to evaluate the model on other data."""
    from omegaconf import OmegaConf

    from qtune.cli.eval import main
    from qtune.data.tokenizer import CharTokenizer

    run_dir = tmp_path / "done"
    (run_dir / "final").mkdir(parents=True)
    CharTokenizer().save(str(run_dir / "final"))
    OmegaConf.save(make_cfg([], "done"), run_dir / "config.yaml")
    (run_dir / "summary.json").write_text('{"eval": {"loss": 1.0}}')
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(SystemExit, match=rf"{override.split('=')[0].lstrip('+')}.*model.path={run_dir}/final data="):
        main([str(run_dir), override])
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_qtune_eval_with_a_broken_summary_writes_nothing(make_cfg, tmp_path):
    from omegaconf import OmegaConf

    from qtune.cli.eval import main
    from qtune.data.tokenizer import CharTokenizer

    run_dir = tmp_path / "half"
    (run_dir / "final").mkdir(parents=True)
    CharTokenizer().save(str(run_dir / "final"))
    OmegaConf.save(make_cfg([], "half"), run_dir / "config.yaml")
    (run_dir / "summary.json").write_text('{"eval": {"loss": 1.0')
    with pytest.raises(SystemExit, match="summary.json: not valid JSON"):
        main([str(run_dir)])
    assert not (run_dir / "eval.json").exists()
