"""Any Hugging Face causal LM, by hub name or local path, with its tokenizer.

``trust_remote_code`` is off unless the caller turns it on: loading a model must not run code
from the model repository that the user did not ask for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """A torch dtype from a config string; ``"auto"`` and ``None`` pass through."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)} or 'auto', "
                         f"got {dtype!r}") from None


def _dtype_kwargs(dtype) -> dict[str, Any]:
    # transformers >= 4.56 calls it ``dtype``; older versions only know ``torch_dtype``
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


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


def load_hf_causal_lm(name_or_path: str, trust_remote_code: bool = False,
                      torch_dtype: str | torch.dtype | None = "float32"):
    """``(model, tokenizer)`` via AutoModelForCausalLM / AutoTokenizer.

    The model config takes the tokenizer's pad token (see ``load_tokenizer``).
    The model comes back in train mode: ``from_pretrained`` returns eval mode, and Lightning
    keeps a submodule's mode, which would silently switch dropout off for fine-tuning.
    """
    from transformers import AutoModelForCausalLM

    name_or_path = str(name_or_path)
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code,
        **_dtype_kwargs(resolve_dtype(torch_dtype)))
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(gen, "pad_token_id", None) is None:
        gen.pad_token_id = tokenizer.pad_token_id
    model.train()
    return model, tokenizer


def checked_path(cfg: Any) -> str:
    """``model.path``: a hub id, or a local directory that exists."""
    path = cfg.get("path")
    if not path:
        raise ValueError("model.path must name a hub model or a local directory (model=hf "
                         "model.path=...)")
    local = str(path).startswith(("/", "./", "../", "~"))  # a path, not a hub id
    if local and not Path(str(path)).expanduser().is_dir():
        raise FileNotFoundError(f"model.path={path}: no such directory")
    return str(path)


def load_hf_tokenizer(cfg: Any):
    """The tokenizer of a ``conf/model/hf.yaml`` node."""
    return load_tokenizer(checked_path(cfg), bool(cfg.get("trust_remote_code", False)))


def build_hf_model(cfg: Any):
    """``(model, tokenizer)`` from a ``conf/model/hf.yaml`` node."""
    path = checked_path(cfg)
    return load_hf_causal_lm(path, trust_remote_code=bool(cfg.get("trust_remote_code", False)),
                             torch_dtype=cfg.get("dtype", "float32"))
