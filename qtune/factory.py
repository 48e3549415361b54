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
    from qtune.models.adapters import apply_adapter, check_adapter_config

    check_adapter_config(cfg)
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
    if data_name == "jsonl" and model_name == "tiny_llama":
        raise ValueError("data=jsonl needs a model with a real tokenizer: use model=hf "
                         "model.path=DIR (model=tiny_llama only knows the embedded task's "
                         "characters)")
    if model_name == "hf":
        from qtune.models.hf import build_hf_model

        model, tokenizer = build_hf_model(cfg.model)
    else:
        from qtune.models.base_cache import load_base, load_or_build_base

        from qtune.models.hf import configure_loaded

        model, tokenizer = load_base(load_or_build_base(cfg.model))
        model = configure_loaded(model.train(), cfg.model)  # train: from_pretrained gives eval
    if data_name == "jsonl":
        from qtune.data.jsonl import build_jsonl_task

        bundle = build_jsonl_task(cfg.data, tokenizer)
        check_context_length(cfg, model, bundle)
    else:
        from qtune.data.embedded import build_embedded_task

        # model=hf: chat form through the model's own tokenizer; tiny_llama: its characters
        bundle = build_embedded_task(cfg.data, tokenizer if model_name == "hf" else None)
    return bundle, apply_adapter(cfg.get("adapter"), model)


def check_context_length(cfg: Any, model: Any, bundle: TaskBundle) -> None:
    """A model with learned absolute positions (GPT-2's position table) fails mid-training,
    deep inside an embedding lookup, on a sequence longer than its table: refuse that before
    any work. Rotary models (Llama, Qwen) have no such table and are left alone."""
    import torch

    config = getattr(model, "config", None)
    limit = next((getattr(config, k) for k in ("n_positions", "max_position_embeddings")
                  if isinstance(getattr(config, k, None), int)), None)
    if limit is None:
        return
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    learned = any(isinstance(m, torch.nn.Embedding) and m is not inputs
                  and m.num_embeddings == limit for m in model.modules())
    if not learned:
        return
    longest = max((len(ds.input_ids[i]) for ds in (bundle.train, bundle.eval)
                   for i in range(len(ds)) if hasattr(ds, "input_ids")), default=0)
    if longest > limit:
        raise ValueError(f"data.path={cfg.data.get('path')}: a sequence of {longest} tokens "
                         f"exceeds the model's {limit} learned positions (model.path="
                         f"{cfg.model.get('path')}): set data.max_length<={limit}")
