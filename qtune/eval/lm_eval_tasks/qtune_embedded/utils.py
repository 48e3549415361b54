"""Docs and scoring of the shipped embedded task (loaded by the harness from this folder)."""

from __future__ import annotations

MARKER = "\nA: "


def load_docs(**kwargs):
    """The embedded eval split as a ``datasets.DatasetDict`` with a ``test`` split. Task
    metadata keys that name embedded-task options (``num_eval``, ``seed``, ...) override the
    defaults, so a run's own data config can be evaluated too."""
    import dataclasses

    import datasets

    from qtune.data.embedded import EmbeddedConfig, config_from, generate

    fields = {f.name for f in dataclasses.fields(EmbeddedConfig)}
    cfg = config_from({k: v for k, v in kwargs.items() if k in fields})
    _, records = generate(cfg)
    rows = [
        {
            "question": r["prompt"].removesuffix(MARKER),
            "prompt": r["prompt"],
            "answer": r["response"],
            "skill": r["skill"],
        }
        for r in records
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_results(doc, results):
    from qtune.eval.metrics import exact_match, token_f1

    prediction = results[0]
    return {"exact_match": exact_match(prediction, doc["answer"]), "token_f1": token_f1(prediction, doc["answer"])}
