"""GGUF checkpoints (llama.cpp's format) as plain Hugging Face directories, converted once.

transformers reads a GGUF file (``from_pretrained(dir, gguf_file=name)``), dequantising it to
fp32, which takes tens of seconds, and flags the result as quantised, so it refuses
``save_pretrained``. qtune therefore converts a file once: it builds the same architecture from
the loaded config without ``quantization_config``, gives it the loaded weights, and saves that
with the tokenizer into ``<qtune cache>/gguf/<sha256 of the file>``; later runs (and every rank
of a multi-process run) load that directory. The directory is written under a file lock into a
temporary directory that is then renamed, so a crash leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from qtune.runs.atomic import replaced_dir
from qtune.models.base_cache import cache_root

META_FILE = "qtune_gguf.json"
INSTALL = "pip install 'qtune[gguf]'  (or: pip install gguf accelerate)"


def require_gguf() -> None:
    """A named error with the install command when the optional ``gguf`` extra is missing."""
    missing = [m for m in ("gguf", "accelerate") if _absent(m)]
    if missing:
        raise ImportError(f"model.gguf_file needs the {' and '.join(missing)} package(s): {INSTALL}")


def _absent(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def gguf_path(directory: str | os.PathLike, gguf_file: str) -> Path:
    """The file ``model.path/model.gguf_file``; missing is an error that names it."""
    path = Path(str(directory)).expanduser() / str(gguf_file)
    if not path.is_file():
        raise FileNotFoundError(f"model.gguf_file={gguf_file}: no such file {path}")
    return path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def gguf_architecture(path: Path) -> str | None:
    """``general.architecture`` of the file (read from its header only)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    return field.contents() if field is not None else None


def converted_dir(directory: str | os.PathLike, gguf_file: str, cache_dir: str | None = None) -> Path:
    """A plain HF directory (model + tokenizer) holding the GGUF file's weights, converted on
    first use and reused afterwards (keyed by the file's sha256, so a changed file converts
    again and a renamed one does not)."""
    require_gguf()
    path = gguf_path(directory, gguf_file)
    digest = file_sha256(path)
    final = Path(cache_dir or cache_root()) / "gguf" / digest[:32]
    if (final / META_FILE).is_file():
        return final
    arch = gguf_architecture(path)
    from filelock import FileLock

    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / META_FILE).is_file():  # another process converted it meanwhile
            return final
        # a leftover directory without the meta file is incomplete: it is replaced
        with replaced_dir(final) as tmp:
            try:
                _convert(path, tmp)
            except ValueError as exc:  # transformers: "GGUF model with architecture X is not supported"
                if "architecture" not in str(exc):
                    raise
                import transformers

                raise ValueError(
                    f"{path}: GGUF architecture {arch!r} cannot be converted by "
                    f"transformers {transformers.__version__} ({exc})"
                ) from None
            (tmp / META_FILE).write_text(
                json.dumps({"source": str(path), "sha256": digest, "architecture": arch}, indent=2) + "\n"
            )
    return final


def _convert(path: Path, out: Path) -> None:
    """Dequantise ``path`` with transformers, then save an unquantised copy to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
