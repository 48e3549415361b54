"""The built-in default model: a tiny Llama-architecture causal LM (about 0.9M parameters).

A real transformers ``LlamaForCausalLM`` rather than a bespoke module, so everything that works
on it (save_pretrained, the ``model=hf`` loader, generation) works on any Hugging Face causal LM.
"""

from __future__ import annotations

from typing import Any, Mapping

ARCH_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rope_theta",
    "tie_word_embeddings",
)
DEFAULT_ARCH = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}


def arch_from(model_cfg: Any = None) -> dict:
    """The architecture keys of a ``model`` config group (others, such as ``base``, ignored),
    completed with the defaults."""
    cfg = to_dict(model_cfg)
    arch = dict(DEFAULT_ARCH)
    arch.update({k: cfg[k] for k in ARCH_KEYS if k in cfg and cfg[k] is not None})
    return arch


def tiny_llama_config(model_cfg: Any = None, vocab_size: int = 99, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2):
    from transformers import LlamaConfig

    arch = arch_from(model_cfg)
    rope_theta = float(arch.pop("rope_theta"))
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        attention_dropout=0.0,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        **arch,
    )
    # transformers 5 keeps rope settings in rope_parameters; 4.x reads rope_theta
    if hasattr(cfg, "rope_parameters") and isinstance(getattr(cfg, "rope_parameters"), dict):
        cfg.rope_parameters["rope_theta"] = rope_theta
    cfg.rope_theta = rope_theta
    return cfg


def build_tiny_llama(model_cfg: Any = None, vocab_size: int = 99, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2):
    """A freshly initialised tiny Llama (initialisation follows the global torch seed)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(model_cfg, vocab_size, pad_id, bos_id, eos_id))
    model.generation_config.pad_token_id = pad_id
    model.generation_config.eos_token_id = eos_id
    return model


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def to_dict(cfg: Any) -> dict:
    """A config node (OmegaConf, mapping or None) as a plain dict."""
    if cfg is None:
        return {}
    if isinstance(cfg, Mapping):
        return dict(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)
