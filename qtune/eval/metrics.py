"""Generation metrics on text: exact match after normalisation and SQuAD-style token F1.

Normalisation is deliberately light: strip, case-fold, collapse runs of whitespace. SQuAD's
evaluator also drops punctuation and English articles, which would call ``3.5`` and ``35`` or
``a b c`` and ``b c`` the same answer; qtune's references are short exact answers (sums, sorted
letters, titles), so only differences a reader would not count as an error are removed.
Token F1 is the harmonic mean of precision and recall over the bag of whitespace tokens of the
normalised texts (two empty texts score 1, one empty text 0), as in SQuAD.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable, Sequence


def normalize_answer(text: str) -> str:
    return " ".join(text.casefold().split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_predictions(
    predictions: Sequence[str], references: Sequence[str], groups: Iterable[str] | None = None
) -> tuple[dict, list[dict]]:
    """``(metrics, rows)``: ``metrics`` holds ``exact_match`` and ``token_f1`` (means over the
    items) and, when items carry groups, ``per_group: {group: {exact_match, token_f1, n}}``;
    ``rows`` the two scores of each item, in order."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    rows = [{"exact_match": exact_match(p, r), "token_f1": token_f1(p, r)} for p, r in zip(predictions, references)]
    n = max(len(rows), 1)
    metrics: dict = {k: sum(row[k] for row in rows) / n for k in ("exact_match", "token_f1")}
    groups = list(groups) if groups is not None else None
    if groups:
        by: dict[str, list[dict]] = defaultdict(list)
        for g, row in zip(groups, rows):
            by[str(g)].append(row)
        metrics["per_group"] = {
            g: {
                "exact_match": sum(r["exact_match"] for r in rs) / len(rs),
                "token_f1": sum(r["token_f1"] for r in rs) / len(rs),
                "n": len(rs),
            }
            for g, rs in sorted(by.items())
        }
    return metrics, rows


BOOKKEEPING = frozenset({"num_items", "max_new_tokens"})


def flatten_eval(ev: dict | None) -> dict[str, float]:
    """Every metric of a summary's ``eval`` section as one flat mapping: the top-level numbers
    (``exact_match``, ``token_f1``, ``loss``, ...) and harness results as ``task/metric``;
    counts and standard errors are left out."""
    ev = ev or {}
    out = {
        k: float(v)
        for k, v in ev.items()
        if k not in BOOKKEEPING and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for task, metrics in sorted((ev.get("lm_eval") or {}).items()):
        out.update({f"{task}/{m}": float(v) for m, v in metrics.items() if not m.endswith("_stderr")})
    return out
