"""The built-in character tokenizer: fixed vocabulary, round-trip, JSON persistence."""

from __future__ import annotations

import pytest

from qtune.data.tokenizer import CharTokenizer


def test_round_trip_and_specials():
    tok = CharTokenizer()
    text = "what is 12+34?\nA: 46"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert len(ids) == len(text) + 2
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special=False) == "<bos>" + text + "<eos>"
    assert tok.decode(tok.encode("ab") + [tok.eos_id] + tok.encode("cd"), stop_at_eos=True) == "ab"
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 4 + 96


def test_unknown_characters_map_to_unk():
    tok = CharTokenizer()
    assert tok.encode("é") == [tok.unk_id]


def test_save_load(tmp_path):
    tok = CharTokenizer()
    tok.save(str(tmp_path))
    again = CharTokenizer.load(str(tmp_path))
    assert again == tok and again.encode("sort cba") == tok.encode("sort cba")
    custom = CharTokenizer("abc")
    path = custom.save(str(tmp_path / "t.json"))
    assert CharTokenizer.load(path).vocab_size == 7


def test_load_rejects_other_json(tmp_path):
    (tmp_path / "x.json").write_text('{"type": "bpe"}')
    with pytest.raises(ValueError, match="not a qtune character tokenizer"):
        CharTokenizer.load(str(tmp_path / "x.json"))
