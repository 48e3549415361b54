"""Exact match and token F1 against hand-worked examples, and the generation eval on a scripted
model whose answers are known."""

import json

import pytest
import torch

from qtune.data.bundle import GenerationEval
from qtune.eval.metrics import exact_match, normalize_answer, score_predictions, token_f1


@pytest.mark.parametrize(
    "pred, ref, em",
    [
        ("Paris", "paris", 1.0),
        ("  the   big\tcat \n", "The big cat", 1.0),  # strip, case-fold, collapse whitespace
        ("3.5", "35", 0.0),  # punctuation is kept
        ("a b c", "b c", 0.0),  # so are articles
        ("", "", 1.0),
    ],
)
def test_exact_match_normalises_case_and_whitespace_only(pred, ref, em):
    assert exact_match(pred, ref) == em


@pytest.mark.parametrize(
    "pred, ref, f1",
    [
        ("the cat sat", "the cat sat", 1.0),
        ("the cat", "the cat sat on", 2 * (1.0 * 0.5) / 1.5),  # P 2/2, R 2/4
        ("cat cat dog", "cat dog dog", 2 * (2 / 3 * 2 / 3) / (4 / 3)),  # bag overlap: one cat, one dog
        ("red", "blue", 0.0),
        ("", "blue", 0.0),
        ("", "  ", 1.0),
        ("Blue  Sky", "blue sky", 1.0),
    ],
)
def test_token_f1_hand_worked(pred, ref, f1):
    assert token_f1(pred, ref) == pytest.approx(f1)


def test_scores_average_overall_and_per_group():
    metrics, rows = score_predictions(["a b", "x", "c"], ["a b", "y", "c d"], ["g1", "g1", "g2"])
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 0.0]
    assert rows[2]["token_f1"] == pytest.approx(2 / 3)  # P 1, R 1/2
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["token_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert metrics["per_group"] == {
        "g1": {"exact_match": 0.5, "token_f1": 0.5, "n": 2},
        "g2": {"exact_match": 0.0, "token_f1": pytest.approx(2 / 3), "n": 1},
    }
    assert normalize_answer(" A\n B ") == "a b"


class _Echo(torch.nn.Module):
    """Next token = last token + 1, eos after token ``last``: answers known in advance."""

    def __init__(self, vocab, last, eos):
        super().__init__()
        self.vocab, self.last, self.eos = vocab, last, eos
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False, logits_to_keep=0):
        nxt = torch.where(input_ids >= self.last, torch.full_like(input_ids, self.eos), input_ids + 1)
        out = type("Out", (), {})()
        out.logits, out.cache = torch.nn.functional.one_hot(nxt, self.vocab).float(), (cache or 0) + 1
        return out


def test_generation_eval_scores_decoded_text_and_writes_samples(tmp_path):
    from qtune.data.tokenizer import CharTokenizer
    from qtune.eval.generation import evaluate_generation

    tok = CharTokenizer("abcdefghijklmFGHx")
    ids = {c: tok.encode(c)[0] for c in "abcdefghijklm"}
    assert ids["a"] + 1 == ids["b"]  # consecutive ids: the echo model spells the alphabet
    eos = tok.eos_id
    prompts = [tok.encode("a"), tok.encode("c"), tok.encode("e")]
    refs = [tok.encode("bcd") + [eos], tok.encode("dx") + [eos], tok.encode("FGH") + [eos]]
    gen = GenerationEval(prompts, refs, ["one", "one", "two"], max_new_tokens=3)
    out = evaluate_generation(
        _Echo(len(tok), ids["m"], tok.eos_id), tok, gen, eos, tok.pad_id, {"batch_size": 2}, tmp_path / "s.jsonl"
    )
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == ["bcd", "def", "fgh"]
    assert [r["reference"] for r in rows] == ["bcd", "dx", "FGH"]
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 1.0]  # FGH == fgh after case-folding
    assert out["exact_match"] == pytest.approx(2 / 3) and out["num_items"] == 3
    assert out["per_group"]["one"]["exact_match"] == 0.5
    capped = evaluate_generation(
        _Echo(len(tok), ids["m"], tok.eos_id), tok, gen, eos, tok.pad_id, {"max_items": 1, "max_new_tokens": 2}, None
    )
    assert capped["num_items"] == 1 and capped["exact_match"] == 0.0  # "bc" is cut short
