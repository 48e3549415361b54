"""Turn the composed config into a task bundle and a model (the only place that dispatches on
``model.name`` and ``data.name``)."""

from __future__ import annotations

from typing import Any

from qtune.data.bundle import TaskBundle

MODELS = ("tiny_llama", "hf", "mlp")
DATASETS = ("embedded", "jsonl", "digits")


def build_task_and_model(cfg: Any) -> tuple[TaskBundle, Any]:
    model_name, data_name = cfg.model.name, cfg.data.name
    if model_name not in MODELS:
        raise ValueError(f"unknown model.name {model_name!r}; known: {', '.join(MODELS)}")
    if data_name not in DATASETS:
        raise ValueError(f"unknown data.name {data_name!r}; known: {', '.join(DATASETS)}")
    if data_name == "digits":
        if model_name != "mlp":
            raise ValueError("data=digits is a classification task: use model=mlp "
                             "(or experiment=digits)")
        from qtune.data.digits import build_digits_task
        from qtune.models.classifier import build_mlp

        bundle = build_digits_task(cfg.data)
        model = build_mlp(cfg.model, bundle.info["num_features"], bundle.info["num_classes"])
        return bundle, model
    if model_name == "mlp":
        raise ValueError(f"model=mlp is a classifier; data={data_name} needs a causal LM")
    if model_name == "hf":
        from qtune.models.hf import build_hf_model

        model, tokenizer = build_hf_model(cfg.model)
    else:
        from qtune.models.base_cache import load_base, load_or_build_base

        model, tokenizer = load_base(load_or_build_base(cfg.model))
        model.train()  # from_pretrained returns eval mode; Lightning would keep it
    if data_name == "jsonl":
        from qtune.data.jsonl import build_jsonl_task

        bundle = build_jsonl_task(cfg.data, tokenizer)
    else:
        if model_name != "tiny_llama":
            raise ValueError("data=embedded uses the built-in character tokenizer: pair it with "
                             "model=tiny_llama")
        from qtune.data.embedded import build_embedded_task

        bundle = build_embedded_task(cfg.data)
    return bundle, model
