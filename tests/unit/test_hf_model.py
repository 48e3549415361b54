"""load_hf_causal_lm on a locally saved tiny Llama: pad token, dtype, trust_remote_code off."""

from __future__ import annotations


import pytest
import torch
import transformers
from omegaconf import OmegaConf

from qtune.models.hf import build_hf_model, load_hf_causal_lm, resolve_dtype
from tiny_hf import save_tiny_llama
from conftest import REPO

CONF = REPO / "conf" / "model" / "hf.yaml"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def test_loads_model_and_sets_pad_to_eos(llama_dir):
    model, tok = load_hf_causal_lm(llama_dir)
    assert isinstance(model, transformers.PreTrainedModel)
    assert tok.pad_token == tok.eos_token == "</s>"
    assert model.config.pad_token_id == tok.eos_token_id
    assert next(model.parameters()).dtype == torch.float32
    assert model.training and all(m.training for m in model.modules())


def test_dtype_from_config_string(llama_dir):
    model, _ = load_hf_causal_lm(llama_dir, torch_dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="model.dtype"):
        resolve_dtype("float8")


def test_trust_remote_code_is_passed_false_by_default(llama_dir, monkeypatch):
    seen = []

    def spy(cls_name):
        real = getattr(transformers, cls_name).from_pretrained

        def from_pretrained(*args, **kwargs):
            seen.append((cls_name, kwargs.get("trust_remote_code", "absent")))
            return real(*args, **kwargs)

        return from_pretrained

    for name in ("AutoTokenizer", "AutoModelForCausalLM"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", spy(name))
    load_hf_causal_lm(llama_dir)
    build_hf_model(OmegaConf.merge(OmegaConf.load(CONF), {"path": str(llama_dir)}))
    assert sorted(seen) == sorted([("AutoTokenizer", False), ("AutoModelForCausalLM", False)] * 2)
    # identity, not truthiness: the flag reaches transformers as the literal False
    assert all(flag is False for _, flag in seen)


def test_conf_defaults_and_missing_path():
    cfg = OmegaConf.load(CONF)
    assert cfg.name == "hf" and cfg.trust_remote_code is False and cfg.dtype == "float32"
    assert cfg.fused_head is False and OmegaConf.is_missing(cfg, "path")
    with pytest.raises(ValueError, match="model.path"):
        build_hf_model({"path": None})


def test_gradient_checkpointing_and_attention_backend(llama_dir):
    cfg = OmegaConf.merge(
        OmegaConf.load(CONF), {"path": str(llama_dir), "gradient_checkpointing": True, "attn_implementation": "eager"}
    )
    model, _ = build_hf_model(cfg)
    assert model.is_gradient_checkpointing and model.config._attn_implementation == "eager"
    ids = torch.tensor([[1, 5, 6, 7]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="model.attn_implementation"):
        build_hf_model(OmegaConf.merge(cfg, {"attn_implementation": "magic"}))
