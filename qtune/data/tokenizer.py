"""Built-in character-level tokenizer for the embedded task.

The vocabulary is fixed (four specials, then printable ASCII and newline), so a tokenizer never
depends on the data it encodes: the cached base model, the generated task and a checkpoint all
agree on ids without sharing state. It is saved as JSON next to a model so a model directory is
self-contained.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
DEFAULT_CHARS = "\n" + "".join(chr(c) for c in range(32, 127))  # newline + printable ASCII
FILENAME = "qtune_char_tokenizer.json"


class CharTokenizer:
    """Maps each character to one id; characters outside the vocabulary map to ``<unk>``."""

    def __init__(self, chars: str = DEFAULT_CHARS) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("tokenizer characters must be unique")
        self.chars = chars
        self.itos = list(SPECIALS) + list(chars)
        self.stoi = {c: i for i, c in enumerate(chars, start=len(SPECIALS))}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(4)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [self.stoi.get(c, self.unk_id) for c in text]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], skip_special: bool = True, stop_at_eos: bool = False) -> str:
        out = []
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos_id:
                break
            if i < len(SPECIALS):
                if not skip_special:
                    out.append(self.itos[i])
                continue
            out.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return "".join(out)

    def batch_decode(self, seqs: Sequence[Iterable[int]], **kw) -> list[str]:
        return [self.decode(s, **kw) for s in seqs]

    # --- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"type": "qtune-char", "version": 1, "specials": list(SPECIALS), "chars": self.chars}

    def save(self, directory_or_file: str) -> str:
        path = _path(directory_or_file)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=True, indent=1)
        return path

    @classmethod
    def load(cls, directory_or_file: str) -> "CharTokenizer":
        path = _path(directory_or_file)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("type") != "qtune-char" or list(data.get("specials", [])) != list(SPECIALS):
            raise ValueError(f"{path}: not a qtune character tokenizer")
        return cls(data["chars"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _path(directory_or_file: str) -> str:
    if os.path.isdir(directory_or_file):
        return os.path.join(directory_or_file, FILENAME)
    return directory_or_file
