"""lm-evaluation-harness through ``qtune-train`` and ``qtune-eval`` on qtune's shipped task,
with a tiny random Llama and a tokenizer built here (no download), and its bad inputs."""

import json

import pytest
from tiny_hf import save_tiny_chat_llama

from qtune.config.declared import ConfigError
from qtune.train import run

N = 6


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """The tiny chat Llama with its weights scaled up: a random model whose greedy answers
    differ from prompt to prompt (at the usual scale every answer is the same newlines)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = save_tiny_chat_llama(tmp_path_factory.mktemp("chat") / "model")
    model = AutoModelForCausalLM.from_pretrained(str(path))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(20)
    model.save_pretrained(str(path))
    return path


def _args(chat_dir, *extra):
    return [
        "model=hf",
        f"model.path={chat_dir}",
        "data=embedded",
        "data.num_train=32",
        "epochs=1",
        "batch_size=16",
        "optim.lr=1e-5",
        "seed=0",
        f"eval.max_items={N}",
        "eval.max_new_tokens=32",
        "eval.lm_eval.tasks=[qtune_embedded_chat]",
        f"eval.lm_eval.limit={N}",
        "eval.lm_eval.apply_chat_template=true",
        "eval.lm_eval.log_samples=true",
        "eval.lm_eval.batch_size=4",
        *extra,
    ]


def test_harness_runs_the_shipped_task_after_training_and_in_qtune_eval(make_cfg, tmp_path, chat_dir):
    from qtune.cli.eval import evaluate
    from qtune.eval.metrics import exact_match

    s = run(make_cfg(_args(chat_dir), "run"))
    run_dir = tmp_path / "run"
    harness = s["eval"]["lm_eval"]["qtune_embedded_chat"]
    full = json.loads((run_dir / "lm_eval_results.json").read_text())
    samples = full["samples"]["qtune_embedded_chat"]
    assert len(samples) == N
    ours = [json.loads(line) for line in (run_dir / "eval_samples.jsonl").open()]
    # the harness's docs are the embedded eval split, in order, and its greedy answers are
    # qtune's own decoding of the same chat-rendered prompts (cut at the task's newline stop)
    assert [d["doc"]["answer"] for d in samples] == [r["reference"] for r in ours]
    assert [d["filtered_resps"][0] for d in samples] == [r["prediction"].split("\n")[0] for r in ours]
    assert harness["exact_match"] == pytest.approx(
        sum(exact_match(d["filtered_resps"][0], d["doc"]["answer"]) for d in samples) / N
    )
    assert set(harness) >= {"exact_match", "token_f1", "exact_match_stderr"}
    assert len({r["prediction"] for r in ours}) > N // 2  # answers that tell prompts apart

    again = evaluate(run_dir, [])  # the saved final/ model gives the same numbers
    assert again["lm_eval"]["qtune_embedded_chat"] == pytest.approx(harness)
    assert again["exact_match"] == pytest.approx(s["eval"]["exact_match"])


def test_qtune_eval_without_a_run_evaluates_the_model_as_loaded(tmp_path, chat_dir):
    from qtune.cli.eval import main

    out = tmp_path / "ev"
    main(
        [
            f"model.path={chat_dir}",
            "model=hf",
            "data=embedded",
            "data.num_train=16",
            f"run_dir={out}",
            "eval.max_items=4",
            "eval.lm_eval.tasks=qtune_embedded",
            "eval.lm_eval.limit=3",
        ]
    )
    result = json.loads((out / "eval.json").read_text())
    assert result["model"] == f"model=hf model.path={chat_dir}"
    assert result["eval"]["num_items"] == 4
    assert 0.0 <= result["eval"]["lm_eval"]["qtune_embedded"]["exact_match"] <= 1.0
    assert len((out / "eval_samples.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "eval.lm_eval.tasks=[qtune_embeded_chat]",
            "unknown task 'qtune_embeded_chat'.*did you mean qtune_embedded_chat",
        ),
        ("eval.lm_eval.include_path=/no/such/folder", "include_path=/no/such/folder: no such folder"),
    ],
)
def test_bad_harness_requests_fail_before_training(make_cfg, tmp_path, chat_dir, override, message):
    with pytest.raises(ConfigError, match=message):
        run(make_cfg(_args(chat_dir, override), "bad"))
    assert not (tmp_path / "bad").exists()


def test_harness_needs_an_hf_model(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="needs a Hugging Face model.*model=tiny_llama"):
        run(make_cfg(["eval.lm_eval.tasks=[qtune_embedded]"], "tiny"))


def test_harness_not_installed_gives_the_install_command(make_cfg, chat_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)  # import fails as if absent
    with pytest.raises(ConfigError, match=r'pip install "qtune\[eval\]"'):
        run(make_cfg(_args(chat_dir), "absent"))


def test_user_task_folder_is_on_the_task_path(make_cfg, tmp_path, chat_dir):
    import shutil

    from qtune.eval.harness import SHIPPED_TASKS, check_lm_eval

    folder = tmp_path / "tasks"
    shutil.copytree(SHIPPED_TASKS / "qtune_embedded", folder)
    text = (folder / "qtune_embedded.yaml").read_text().replace("task: qtune_embedded", "task: my_copy")
    (folder / "my_copy.yaml").write_text(text)
    cfg = make_cfg(_args(chat_dir, "eval.lm_eval.tasks=[my_copy]", f"eval.lm_eval.include_path={folder}"))
    check_lm_eval(cfg)  # known through the user's folder
    with pytest.raises(ConfigError, match="unknown task 'my_copy'"):
        check_lm_eval(make_cfg(_args(chat_dir, "eval.lm_eval.tasks=[my_copy]")))
