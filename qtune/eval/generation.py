"""Generation eval for SFT data with references: greedy decoding, then text metrics.

Every SFT source with reference answers (the embedded task, a JSONL eval split) hands the
engine a :class:`~qtune.data.bundle.GenerationEval`. The model decodes each prompt greedily
(qtune's KV-cached loop for the built-in character model, transformers' ``generate`` for an
HF model), predictions and references are decoded to text by the same tokenizer, and
:mod:`qtune.eval.metrics` scores them (normalised exact match, token F1, per group). Each item's
prompt, reference, prediction and scores go to ``eval_samples.jsonl``, so a number can always
be traced to the answers behind it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from qtune.data.bundle import GenerationEval
from qtune.eval.metrics import score_predictions
from qtune.eval.greedy import _until_eos


def decode(tokenizer, ids: Sequence[int], eos_id: int | None) -> str:
    """Text of ``ids`` up to eos, special tokens dropped (character or HF tokenizer)."""
    ids = _until_eos(ids, eos_id)
    from qtune.data.tokenizer import CharTokenizer

    if isinstance(tokenizer, CharTokenizer):
        return tokenizer.decode(ids, skip_special=True)
    return tokenizer.decode(ids, skip_special_tokens=True)


def uses_hf_generate(tokenizer) -> bool:
    """A Hugging Face tokenizer means an HF model (``model=hf``): decode with ``generate``; the
    built-in character model keeps qtune's own KV-cached greedy loop."""
    from qtune.data.tokenizer import CharTokenizer

    return tokenizer is not None and not isinstance(tokenizer, CharTokenizer)


def subset(gen: GenerationEval, max_items: int | None, max_new_tokens: int | None) -> GenerationEval:
    """The first ``max_items`` items, decoding at most ``max_new_tokens`` (None: as built)."""
    n = len(gen.prompt_ids) if not max_items else min(int(max_items), len(gen.prompt_ids))
    return GenerationEval(
        list(gen.prompt_ids[:n]),
        list(gen.target_ids[:n]),
        list(gen.groups[:n]) if gen.groups else None,
        int(max_new_tokens or gen.max_new_tokens),
    )


def predict(model, tokenizer, gen: GenerationEval, eos_id: int, pad_id: int, batch_size: int) -> list[list[int]]:
    """Greedy continuations (token ids) of every prompt of ``gen``, in order."""
    if uses_hf_generate(tokenizer):
        from qtune.eval.hf_generate import hf_generate

        return hf_generate(model, gen.prompt_ids, eos_id, pad_id, gen.max_new_tokens, batch_size)
    from qtune.eval.greedy import greedy_generate

    return greedy_generate(model, gen.prompt_ids, eos_id, pad_id, gen.max_new_tokens, max(batch_size, 1))


def evaluate_generation(
    model,
    tokenizer,
    generation: GenerationEval,
    eos_id: int,
    pad_id: int,
    eval_cfg: Any,
    samples_path: str | Path | None = None,
) -> dict:
    """``{"exact_match", "token_f1", "per_group"?, "num_items", "max_new_tokens"}``; writes
    ``samples_path`` (one JSON line per item) when given."""
    gen = subset(generation, eval_cfg.get("max_items"), eval_cfg.get("max_new_tokens"))
    was_training = model.training
    model.eval()
    try:
        preds = predict(model, tokenizer, gen, eos_id, pad_id, int(eval_cfg.get("batch_size") or 64))
    finally:
        model.train(was_training)
    pred_text = [decode(tokenizer, p, eos_id) for p in preds]
    ref_text = [decode(tokenizer, t, eos_id) for t in gen.target_ids]
    metrics, rows = score_predictions(pred_text, ref_text, gen.groups)
    metrics.update(num_items=len(rows), max_new_tokens=gen.max_new_tokens)
    if samples_path is not None:
        groups = gen.groups or [None] * len(rows)
        write_samples(
            samples_path,
            [
                {
                    "prompt": decode(tokenizer, p, None),
                    "reference": r,
                    "prediction": t,
                    **({"group": g} if g is not None else {}),
                    **scores,
                }
                for p, r, t, g, scores in zip(gen.prompt_ids, ref_text, pred_text, groups, rows)
            ],
        )
    return metrics


def write_samples(path: str | Path, rows: list[dict]) -> None:
    """One JSON object per line, written to a temporary file and renamed into place."""
    from qtune.runs.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
