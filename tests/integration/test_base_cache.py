"""The cached base of the default model: built once per config, deterministically, reused."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from qtune.data.bundle import GenerationEval
from qtune.data.tokenizer import CharTokenizer
from qtune.eval.greedy import greedy_exact_match, greedy_generate
from qtune.models import base_cache
from qtune.models.base_cache import META_FILE, base_key, load_base, load_or_build_base

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "base": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "eval_items": 10, "log_every": 1},
}


def _with_base(**kw):
    return dict(TINY, base=dict(TINY["base"], **kw))


def test_build_then_reuse(tmp_path, monkeypatch):
    logs: list[str] = []
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    path = load_or_build_base(TINY, cache_dir=str(tmp_path), log=logs.append)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is left alone
    assert os.path.basename(path) == f"tiny_llama-{base_key(TINY)}"
    for name in ("config.json", META_FILE, "qtune_char_tokenizer.json"):
        assert os.path.isfile(os.path.join(path, name))
    assert any("building" in m for m in logs) and any("step 3/3" in m for m in logs)
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.startswith(".tmp-")]
    stamp = os.path.getmtime(os.path.join(path, META_FILE))

    def no_rebuild(*a, **k):
        raise AssertionError("the cached base was rebuilt")

    monkeypatch.setattr(base_cache, "pretrain_base", no_rebuild)
    assert load_or_build_base(TINY, cache_dir=str(tmp_path)) == path
    assert load_or_build_base(_with_base(log_every=2), cache_dir=str(tmp_path)) == path  # unhashed
    assert os.path.getmtime(os.path.join(path, META_FILE)) == stamp
    model, tok = load_base(path)
    assert tok == CharTokenizer() and model.config.vocab_size == tok.vocab_size


def test_key_follows_config():
    assert base_key(TINY) == base_key(_with_base(log_every=5))
    assert base_key(TINY) != base_key(_with_base(steps=4))
    assert base_key(TINY) != base_key(dict(TINY, hidden_size=64))
    with pytest.raises(ValueError, match="stepz"):
        base_key(_with_base(stepz=1))


def test_deterministic_build(tmp_path):
    a = load_base(load_or_build_base(TINY, cache_dir=str(tmp_path / "a"), log=lambda m: None))[0]
    b = load_base(load_or_build_base(TINY, cache_dir=str(tmp_path / "b"), log=lambda m: None))[0]
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parallel_callers_build_once(tmp_path):
    logs: list[str] = []
    paths: list[str] = []
    cfg = _with_base(seed=1)

    def call():
        paths.append(load_or_build_base(cfg, cache_dir=str(tmp_path), log=logs.append))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and len(paths) == 3
    assert sum("building" in m for m in logs) == 1


def test_left_padded_batches_decode_like_single_prompts(tmp_path):
    model, tok = load_base(load_or_build_base(TINY, cache_dir=str(tmp_path), log=lambda m: None))
    prompts = [tok.encode(t, add_bos=True) for t in ("12+3=", "rev(abcd)=", "7+8=", "count(a,aab)=")]
    batched = greedy_generate(model, prompts, tok.eos_id, tok.pad_id, max_new_tokens=6, batch_size=4)
    single = [greedy_generate(model, [p], tok.eos_id, tok.pad_id, max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    wrong = [t for t in single[1] if t != tok.eos_id] + [7, tok.eos_id]  # longer: never equal
    gen = GenerationEval(
        prompt_ids=prompts,
        target_ids=[single[0], wrong, single[2], single[3]],
        groups=["add", "rev", "add", "count"],
        max_new_tokens=6,
    )
    res = greedy_exact_match(model, gen, tok.eos_id, tok.pad_id)
    assert res["exact_match"] == 0.75
    assert res["per_group"] == {"add": 1.0, "count": 1.0, "rev": 0.0}


def test_yaml_defaults_match_code_defaults():
    """The config group files and the code defaults describe the same base and task, so the
    check script and qtune-train share one cached base."""
    from hydra import compose, initialize_config_module

    from qtune.data.embedded import config_from

    with initialize_config_module(config_module="qtune.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["run_dir=/tmp/unused"])
        pre = compose(config_name="train", overrides=["run_dir=/tmp/unused", "experiment=pretrain_base"])
    assert cfg.model.name == "tiny_llama" and cfg.data.name == "embedded"
    assert base_key(cfg.model) == base_key({})
    assert config_from(cfg.data) == config_from({})
    assert pre.task == "pretrain"


def test_packed_pretraining_batch_labels_answers_only():
    from qtune.data.skills import SkillSpec, raw_corpus, raw_prompt

    tok = CharTokenizer()
    problems = raw_corpus(6, seed=0, spec=SkillSpec())
    ids, labels = base_cache._batch(problems, tok, answer_only=True, pack=3)
    assert ids.shape[0] == 2 and int(ids[0, 0]) == tok.bos_id
    text = tok.decode(ids[0], skip_special=False)
    assert text.count("<eos>") == 3
    assert text.startswith("<bos>" + raw_prompt(problems[0]) + problems[0].answer + "<eos>" + raw_prompt(problems[1]))
    kept = tok.decode([int(i) for i in labels[0] if i >= 0], skip_special=False)
    assert kept == "".join(p.answer + "<eos>" for p in problems[:3])
