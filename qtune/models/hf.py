"""Any Hugging Face causal LM, by hub name or local path, with its tokenizer.

``trust_remote_code`` is off unless the caller turns it on: loading a model must not run code
from the model repository that the user did not ask for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """A torch dtype from a config string; ``"auto"`` and ``None`` pass through."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)} or 'auto', got {dtype!r}") from None


def _dtype_kwargs(dtype) -> dict[str, Any]:
    # transformers >= 4.56 calls it ``dtype``; older versions only know ``torch_dtype``
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


ATTN_IMPLEMENTATIONS = ("sdpa", "sdpa_segments", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def checked_attn_implementation(impl: str) -> str:
    """``model.attn_implementation`` checked; qtune's own ``sdpa_segments`` registered with
    transformers before a model asks for it."""
    if impl not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"model.attn_implementation={impl!r}; expected one of {list(ATTN_IMPLEMENTATIONS)}")
    if impl == "sdpa_segments":
        from qtune.models.segment_attention import register

        register()
    return impl


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer alone (cheap next to the weights: the data is built with it first). One
    without a pad token gets its eos token as pad (batches are right-padded and padding is
    masked out of the loss, so the choice never trains)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{name_or_path}: tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass (less memory, about one more forward).

    Non-reentrant checkpointing, so it also works when the inputs of a checkpointed block need
    no gradient (frozen embeddings under LoRA); the KV cache is off while training."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False


def configure_loaded(model, cfg: Any):
    """``model.attn_implementation`` and ``model.gradient_checkpointing`` on a model that is
    already loaded (the built-in tiny Llama; ``model=hf`` passes the first to from_pretrained)."""
    impl = cfg.get("attn_implementation")
    if impl is not None:
        model.set_attn_implementation(checked_attn_implementation(impl))
    if cfg.get("gradient_checkpointing", False):
        enable_gradient_checkpointing(model)
    return model


def load_hf_causal_lm(
    name_or_path: str,
    trust_remote_code: bool = False,
    torch_dtype: str | torch.dtype | None = "float32",
    attn_implementation: str | None = None,
    **from_pretrained_kwargs,
):
    """``(model, tokenizer)`` via AutoModelForCausalLM / AutoTokenizer.

    The model config takes the tokenizer's pad token (see ``load_tokenizer``).
    The model comes back in train mode: ``from_pretrained`` returns eval mode, and Lightning
    keeps a submodule's mode, which would silently switch dropout off for fine-tuning.
    """
    from transformers import AutoModelForCausalLM

    name_or_path = str(name_or_path)
    if attn_implementation is not None:
        from_pretrained_kwargs["attn_implementation"] = checked_attn_implementation(attn_implementation)
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        trust_remote_code=trust_remote_code,
        **_dtype_kwargs(resolve_dtype(torch_dtype)),
        **from_pretrained_kwargs,
    )
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(gen, "pad_token_id", None) is None:
        gen.pad_token_id = tokenizer.pad_token_id
    model.train()
    return model, tokenizer


def checked_path(cfg: Any) -> str:
    """``model.path`` (or the directory of an installed ``model.package``): a hub id, or a
    local directory that exists. Cheap: the validation pass runs it before any work."""
    path = cfg.get("path")
    if cfg.get("package") and not path:
        from qtune.models.packaged import package_dir

        path = package_dir(cfg.package)
    if not path:
        raise ValueError("model.path must name a hub model or a local directory (model=hf model.path=...)")
    local = str(path).startswith(("/", "./", "../", "~"))  # a path, not a hub id
    if local and not Path(str(path)).expanduser().is_dir():
        raise FileNotFoundError(f"model.path={path}: no such directory")
    return str(path)


def model_dir(cfg: Any) -> str:
    """The directory (or hub id) the weights and tokenizer load from: with ``gguf_file`` the
    GGUF file in ``model.path``, converted once into the qtune cache (:mod:`qtune.models.gguf`)."""
    path = checked_path(cfg)
    if cfg.get("gguf_file"):
        from qtune.models.gguf import converted_dir

        path = converted_dir(path, cfg.gguf_file, cfg.get("cache_dir"))
    return str(path)


def load_hf_tokenizer(cfg: Any):
    """The tokenizer of a ``conf/model/hf.yaml`` node (loaded before the weights, so the data
    is built and checked first)."""
    return load_tokenizer(model_dir(cfg), bool(cfg.get("trust_remote_code", False)))


def build_hf_model(cfg: Any):
    """``(model, tokenizer)`` from a ``conf/model/hf.yaml`` node: ``path`` a hub name or a
    directory, or the directory of an installed ``package``; with ``gguf_file`` the GGUF file
    there, converted once into the qtune cache."""
    path = model_dir(cfg)
    model, tokenizer = load_hf_causal_lm(
        path,
        trust_remote_code=bool(cfg.get("trust_remote_code", False)),
        torch_dtype=cfg.get("dtype", "float32"),
        attn_implementation=cfg.get("attn_implementation"),
    )
    if cfg.get("gradient_checkpointing", False):
        enable_gradient_checkpointing(model)
    return model, tokenizer
