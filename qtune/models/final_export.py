"""``<run_dir>/final/``: the trained model in Hugging Face format, with its tokenizer.

``AutoModelForCausalLM.from_pretrained(run_dir / "final")`` loads it. LoRA adapters are merged
into a copy of the model (the trained module stays as it is) unless ``adapter.merge=false``,
which saves the adapter alone (peft's format, which transformers loads on top of the base it
names). Written into a temporary directory and renamed, so ``final/`` is never half-written.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from qtune.runs.atomic import replaced_dir


def is_exportable(model) -> bool:
    """An HF model or a peft wrapper of one (qtune's MLP classifier is neither)."""
    return hasattr(model, "save_pretrained")


def export_final(model, tokenizer, out: str | os.PathLike, merge: bool = True) -> Path | None:
    if not is_exportable(model):
        return None
    out = Path(out)
    with replaced_dir(out) as tmp:
        to_save = model
        if merge and hasattr(model, "merge_and_unload"):
            to_save = copy.deepcopy(model).merge_and_unload()
        was_training = to_save.training
        to_save.eval()
        to_save.save_pretrained(str(tmp))
        to_save.train(was_training)
        if hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(tmp))
        elif hasattr(tokenizer, "save"):  # the built-in character tokenizer
            tokenizer.save(str(tmp))
    return out
