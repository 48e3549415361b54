"""Turn the composed config into a task bundle and a model (the only place that dispatches on
``model.name`` and ``data.name``)."""

from __future__ import annotations

from typing import Any

from qtune.data.bundle import TaskBundle


def build_task_and_model(cfg: Any) -> tuple[TaskBundle, Any]:
    """The data first, then the model: a check that needs the data (``max_length`` that cuts
    answers, an empty JSONL file) fails before the base is pretrained or weights are loaded.
    Only an HF model's tokenizer is needed before its data, and it is cheap to load (a GGUF
    file is converted first, once, since its tokenizer lives in it)."""
    from qtune.config.schema import DATASETS, MODELS, check_pairing
    from qtune.models.adapters import apply_adapter

    model_name, data_name = cfg.model.name, cfg.data.name
    if model_name not in MODELS:
        raise ValueError(f"unknown model.name {model_name!r}; known: {', '.join(MODELS)}")
    if data_name not in DATASETS:
        raise ValueError(f"unknown data.name {data_name!r}; known: {', '.join(DATASETS)}")
    check_pairing(cfg)
    if data_name == "digits":
        from qtune.data.digits import build_digits_task
        from qtune.models.classifier import build_mlp

        bundle = build_digits_task(cfg.data)
        model = build_mlp(cfg.model, bundle.info["num_features"], bundle.info["num_classes"])
        return bundle, model
    from qtune.data.embedded import build_embedded_task

    if model_name == "hf":
        from qtune.models.hf import build_hf_model, load_hf_tokenizer

        tokenizer = load_hf_tokenizer(cfg.model)
        if data_name == "jsonl":
            from qtune.data.jsonl import build_jsonl_task

            bundle = build_jsonl_task(cfg.data, tokenizer)
        else:  # the embedded task in chat form, through the model's own tokenizer
            bundle = build_embedded_task(cfg.data, tokenizer)
        model, _ = build_hf_model(cfg.model)
        if data_name == "jsonl":
            check_context_length(cfg, model, bundle)
    else:  # the built-in tiny Llama on the embedded task, in its characters
        from qtune.models.base_cache import load_base, load_or_build_base
        from qtune.models.hf import configure_loaded

        bundle = build_embedded_task(cfg.data)
        model, _ = load_base(load_or_build_base(cfg.model))
        model = configure_loaded(model.train(), cfg.model)  # train: from_pretrained gives eval
    return bundle, apply_adapter(cfg.get("adapter"), model)


def check_context_length(cfg: Any, model: Any, bundle: TaskBundle) -> None:
    """A model with learned absolute positions (GPT-2's position table) fails mid-training,
    deep inside an embedding lookup, on a sequence longer than its table: refuse that before
    any work. Rotary models (Llama, Qwen) have no such table and are left alone."""
    import torch

    config = getattr(model, "config", None)
    limit = next(
        (
            getattr(config, k)
            for k in ("n_positions", "max_position_embeddings")
            if isinstance(getattr(config, k, None), int)
        ),
        None,
    )
    if limit is None:
        return
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    learned = any(
        isinstance(m, torch.nn.Embedding) and m is not inputs and m.num_embeddings == limit for m in model.modules()
    )
    if not learned:
        return
    longest = max(
        (
            len(ds.input_ids[i])
            for ds in (bundle.train, bundle.eval)
            for i in range(len(ds))
            if hasattr(ds, "input_ids")
        ),
        default=0,
    )
    if longest > limit:
        raise ValueError(
            f"data.path={cfg.data.get('path')}: a sequence of {longest} tokens "
            f"exceeds the model's {limit} learned positions (model.path="
            f"{cfg.model.get('path')}): set data.max_length<={limit}"
        )


def build_task_with_tokenizer(cfg: Any, tokenizer: Any) -> TaskBundle:
    """The SFT data of ``cfg`` through a given tokenizer (a finished run's ``final/`` one):
    the character tokenizer gives the embedded task in its characters, an HF one in chat form."""
    from qtune.data.tokenizer import CharTokenizer

    if cfg.data.name == "jsonl":
        from qtune.data.jsonl import build_jsonl_task

        return build_jsonl_task(cfg.data, tokenizer)
    if cfg.data.name != "embedded":
        raise ValueError(
            f"data={cfg.data.name} has no generation eval; qtune-eval evaluates SFT runs (data=embedded or data=jsonl)"
        )
    from qtune.data.embedded import build_embedded_task

    return build_embedded_task(cfg.data, None if isinstance(tokenizer, CharTokenizer) else tokenizer)
