"""The embedded SFT task: determinism, injected noise and redundancy, clean disjoint eval,
response-only labels, and the exact-match evaluation."""

from __future__ import annotations

import random

import pytest
import torch

from qtune.data.bundle import GenerationEval
from qtune.data.embedded import build_embedded_task, config_from
from qtune.data.sft import IGNORE_INDEX
from qtune.data.skills import SKILLS, Problem, SkillSpec, near_miss, sample_problem
from qtune.eval.greedy import greedy_exact_match, greedy_generate

SMALL = {"num_train": 1000, "num_eval": 100, "seed": 3}


@pytest.fixture(scope="module")
def bundle():
    return build_embedded_task(SMALL)


def test_deterministic_from_seed(bundle):
    again = build_embedded_task(SMALL)
    assert again.train_meta == bundle.train_meta
    assert all(torch.equal(a, b) for a, b in zip(again.train.input_ids, bundle.train.input_ids))
    other = build_embedded_task(dict(SMALL, seed=4))
    assert [m["prompt"] for m in other.train_meta] != [m["prompt"] for m in bundle.train_meta]


def test_kinds_and_fractions(bundle):
    kinds = [m["kind"] for m in bundle.train_meta]
    assert len(kinds) == 1000
    assert kinds.count("noisy") == 200 and kinds.count("duplicate") == 100
    assert bundle.info["train_noise"] == {"near_miss": 100, "other_answer": 100}
    assert set(m["skill"] for m in bundle.train_meta) == set(SKILLS)
    custom = build_embedded_task(dict(SMALL, noise_fraction=0.3, near_miss_share=1.0, duplicate_fraction=0.0))
    assert custom.info["train_kinds"] == {"clean": 700, "noisy": 300}
    assert custom.info["train_noise"] == {"near_miss": 300}


def test_noisy_items_keep_their_truth(bundle):
    tok = bundle.tokenizer
    for i, m in enumerate(bundle.train_meta):
        if m["kind"] != "noisy":
            assert m["response"] == m["true_response"] and m["wrong_positions"] == []
            continue
        assert m["response"] != m["true_response"] and m["wrong_positions"]
        if m["noise"] == "near_miss":  # same length, one digit +-1 or two characters swapped
            r, t = m["response"], m["true_response"]
            assert len(r) == len(t)
            diff = [k for k in range(len(r)) if r[k] != t[k]]
            if m["skill"] in ("add", "count"):
                assert len(diff) == 1 and abs(int(r[diff[0]]) - int(t[diff[0]])) == 1
            else:
                assert sorted(r) == sorted(t) and len(diff) == 2
        # wrong_positions index the response tokens (eos included) after response_start
        labels = bundle.train.labels[i]
        true_ids = tok.encode(m["true_response"], add_eos=True)
        for p in m["wrong_positions"]:
            label = int(labels[m["response_start"] + p])
            assert p >= len(true_ids) or label != true_ids[p]


def test_duplicates_copy_clean_items(bundle):
    meta = bundle.train_meta
    for i, m in enumerate(meta):
        if m["kind"] == "duplicate":
            src = meta[m["duplicate_of"]]
            assert src["kind"] == "clean" and src["prompt"] == m["prompt"] and src["response"] == m["response"]
            assert torch.equal(bundle.train.input_ids[i], bundle.train.input_ids[m["duplicate_of"]])
    uniques = [m["prompt"] for m in meta if m["kind"] != "duplicate"]
    assert len(set(uniques)) == len(uniques)


def test_eval_split_clean_and_disjoint(bundle):
    assert len(bundle.eval) == 100 and all(m["kind"] == "clean" for m in bundle.eval.meta)
    train_prompts = {m["prompt"] for m in bundle.train_meta}
    assert not train_prompts & {m["prompt"] for m in bundle.eval.meta}
    gen = bundle.generation
    assert len(gen.prompt_ids) == 100 and set(gen.groups) == set(SKILLS)
    assert all(t[-1] == bundle.eos_id for t in gen.target_ids)
    assert gen.max_new_tokens == max(len(t) for t in gen.target_ids)


def test_response_only_labels_and_collate(bundle):
    item = bundle.train[5]
    assert item["sample_id"] == 5
    m = bundle.train_meta[5]
    start = m["response_start"]
    labels, ids = item["labels"], item["input_ids"]
    assert (labels[:start] == IGNORE_INDEX).all()
    assert torch.equal(labels[start:], ids[start:]) and int(ids[-1]) == bundle.eos_id
    assert bundle.tokenizer.decode(ids[start:]) == m["response"]
    batch = bundle.collate([bundle.train[i] for i in range(4)])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["sample_id"].tolist() == [0, 1, 2, 3]


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="noise_fraction"):
        config_from({"noise_fraction": 1.5})
    with pytest.raises(ValueError, match="colour"):
        config_from({"colour": 1})
    with pytest.raises(ValueError, match="unknown skills"):
        config_from({"skills": ["divide"]})


def test_near_miss_edge_cases():
    rng = random.Random(0)
    assert near_miss(Problem("count", ("a", "bb"), "0"), rng) == "1"
    for _ in range(50):
        wrong = near_miss(Problem("add", (5, 5), "10"), rng)
        assert wrong in ("20", "11") and not wrong.startswith("0")
    assert near_miss(Problem("sort", ("aa",), "aa"), rng) != "aa"
    spec = SkillSpec()
    for skill in SKILLS:
        p = sample_problem(skill, rng, spec)
        assert near_miss(p, rng) != p.answer


class _Scripted(torch.nn.Module):
    """A 'model' whose next token is a fixed function of the last real token: tok -> tok + 1,
    and eos after token 9. Left padding must not change what a row generates."""

    def __init__(self, vocab=16, eos=2):
        super().__init__()
        self.vocab, self.eos = vocab, eos
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False, logits_to_keep=0):
        nxt = torch.where(input_ids >= 9, torch.full_like(input_ids, self.eos), input_ids + 1)
        logits = torch.nn.functional.one_hot(nxt, self.vocab).float()

        class Out:
            pass

        out = Out()
        out.logits, out.cache = logits, (cache or 0) + 1
        return out


def test_greedy_exact_match_on_scripted_model():
    model = _Scripted()
    gen = GenerationEval(
        prompt_ids=[[1, 5], [1, 1, 1, 7], [1, 8], [4]],
        target_ids=[[6, 7, 8, 9, 2], [8, 9, 2], [9, 3, 2], [5, 6, 2]],
        groups=["a", "a", "b", "b"],
        max_new_tokens=5,
    )
    out = greedy_generate(model, gen.prompt_ids, eos_id=2, max_new_tokens=5, batch_size=3)
    assert out == [[6, 7, 8, 9, 2], [8, 9, 2], [9, 2], [5, 6, 7, 8, 9]]
    res = greedy_exact_match(model, gen, eos_id=2, batch_size=2)
    assert res["exact_match"] == 0.5 and res["per_group"] == {"a": 1.0, "b": 0.0}


def test_drop_kinds_gives_the_clean_only_oracle():
    from qtune.data.embedded import build_embedded_task

    cfg = {"num_train": 200, "num_eval": 20, "noise_fraction": 0.2, "duplicate_fraction": 0.1}
    full = build_embedded_task(cfg)
    oracle = build_embedded_task(dict(cfg, drop_kinds=["noisy"]))
    kinds = [m["kind"] for m in full.train_meta]
    assert len(oracle.train) == len(full.train) - kinds.count("noisy")
    assert all(m["kind"] != "noisy" for m in oracle.train_meta)
    kept_prompts = [m["prompt"] for m in full.train_meta if m["kind"] != "noisy"]
    assert [m["prompt"] for m in oracle.train_meta] == kept_prompts  # same items, same order
    with pytest.raises(ValueError, match="drop_kinds"):
        build_embedded_task(dict(cfg, drop_kinds=["nosy"]))
