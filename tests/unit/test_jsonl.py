"""JSONL (Alpaca and chat) through build_jsonl_task: labels, truncation, bad input, training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from qtune.data.jsonl import DataError, build_jsonl_task, plain_prompt, read_jsonl
from qtune.data.sft import IGNORE_INDEX
from qtune.models.hf import load_hf_causal_lm
from tiny_hf import save_tiny_llama
from conftest import REPO

CONF = REPO / "conf" / "data" / "jsonl.yaml"

ALPACA = [
    {"instruction": "add two and three", "output": "five"},
    {"instruction": "reverse the words", "input": "red green blue", "output": "blue green red"},
    {"instruction": "sort these numbers", "input": "three one two", "output": "one two three"},
    {"instruction": "what colour is the grass", "input": "", "output": "it is green"},
]
CHAT = [
    {
        "messages": [
            {"role": "system", "content": "you are a helpful assistant"},
            {"role": "user", "content": "what colour is the sky"},
            {"role": "assistant", "content": "it is blue"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "add two and three"},
            {"role": "assistant", "content": "five thanks"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "reverse the words red blue"},
            {"role": "assistant", "content": "blue red"},
        ]
    },
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def cfg(path, **kw):
    base = OmegaConf.load(CONF)
    return OmegaConf.merge(base, {"path": str(path), "seed": 0, **kw})


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "chat_template"])
def hf(request, tmp_path_factory):
    d = save_tiny_llama(tmp_path_factory.mktemp("llama"), chat_template=request.param)
    return load_hf_causal_lm(d)


def expected_prompt(tok, messages):
    if tok.chat_template:
        return list(tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    return [tok.bos_token_id] + tok(plain_prompt(messages), add_special_tokens=False)["input_ids"]


def prompts_and_responses(row):
    if "messages" in row:
        return row["messages"][:-1], row["messages"][-1]["content"]
    content = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": content}], row["output"]


@pytest.mark.parametrize("rows", [ALPACA, CHAT, ALPACA + CHAT], ids=["alpaca", "chat", "mixed"])
def test_labels_are_response_only(hf, rows, tmp_path):
    model, tok = hf
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    evalf = write_jsonl(tmp_path / "eval.jsonl", rows[:1])
    bundle = build_jsonl_task(cfg(train, eval_path=str(evalf)), tok)
    assert bundle.task == "sft" and len(bundle.train) == len(rows) and len(bundle.eval) == 1
    assert bundle.info["dropped_empty"] == bundle.info["dropped_truncated"] == 0
    for i, row in enumerate(rows):
        item = bundle.train[i]
        messages, response = prompts_and_responses(row)
        p = expected_prompt(tok, messages)
        r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert item["sample_id"] == i and bundle.train_meta[i]["line"] == i + 1
        assert item["input_ids"].tolist() == p + r
        assert item["labels"].tolist() == [IGNORE_INDEX] * len(p) + r
        assert tok.unk_token_id not in item["input_ids"].tolist()


def test_collated_batch_trains_the_loaded_model(hf, tmp_path):
    model, tok = hf
    bundle = build_jsonl_task(cfg(write_jsonl(tmp_path / "t.jsonl", ALPACA + CHAT), eval_fraction=0.25), tok)
    assert len(bundle.train) == 5 and len(bundle.eval) == 2
    batch = bundle.collate([bundle.train[i] for i in range(len(bundle.train))])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    model.train()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad()


def test_eval_fraction_split_is_deterministic_and_disjoint(hf, tmp_path):
    _, tok = hf
    sums = [("one", "two", "three")] * 3 + [("two", "three", "five")] * 7
    rows = [{"instruction": f"add {a} and {b}", "output": c} for a, b, c in sums]
    path = write_jsonl(tmp_path / "t.jsonl", rows)

    def lines(bundle):
        return (sorted(m["line"] for m in bundle.train_meta), sorted(m["line"] for m in bundle.eval.meta))

    a = build_jsonl_task(cfg(path, eval_fraction=0.3), tok)
    assert lines(a) == lines(build_jsonl_task(cfg(path, eval_fraction=0.3), tok))
    tr, ev = lines(a)
    assert len(ev) == 3 and not set(tr) & set(ev) and sorted(tr + ev) == list(range(1, 11))
    assert lines(build_jsonl_task(cfg(path, eval_fraction=0.3, seed=1), tok)) != lines(a)
    assert [it["sample_id"] for it in a.train] == list(range(7))


def test_truncation_keeps_prompt_and_drops_fully_truncated(hf, tmp_path):
    _, tok = hf
    long_answer = "one two three four five six seven eight nine ten"
    rows = [
        {"instruction": "add two and three", "output": long_answer},
        {"instruction": " ".join(["one two three"] * 20), "output": "five"},
    ]
    bundle = build_jsonl_task(
        cfg(
            write_jsonl(tmp_path / "t.jsonl", rows),
            eval_path=str(write_jsonl(tmp_path / "e.jsonl", rows[:1])),
            max_length=16,
        ),
        tok,
    )
    assert bundle.info["train"]["dropped_truncated"] == 1 and len(bundle.train) == 1
    assert bundle.info["train"]["cut_responses"] == 1  # kept, its end (eos included) not trained
    item = bundle.train[0]
    p = expected_prompt(tok, [{"role": "user", "content": rows[0]["instruction"]}])
    assert len(p) < 16 and len(item["input_ids"]) == 16
    assert item["labels"].tolist()[: len(p)] == [IGNORE_INDEX] * len(p)
    full = tok(rows[0]["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(p) + len(full) > 16  # the response really is cut, from the right
    assert item["labels"].tolist()[len(p) :] == full[: 16 - len(p)]


# ----------------------------------------------------------------------------- bad input


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [ALPACA[0], "", '{"instruction": "x", "output": '])
    with pytest.raises(
        DataError,
        match=r"bad\.jsonl:3: malformed JSON: Expecting value "
        r"\(column 31\)",
    ):
        read_jsonl(path)
    path.write_bytes(b'\xef\xbb\xbf{"instruction": "a", "output": "b"}\n[1, 2]\n')  # BOM is fine
    with pytest.raises(DataError, match=r"bad\.jsonl:2: expected a JSON object"):
        read_jsonl(path)
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n{"output": "\xff"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid UTF-8"):
        read_jsonl(path)
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": "b", "output": "c"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: the key 'output' appears twice in one object"):
        read_jsonl(path)
    path.write_bytes(b'{"instruction": "a", "output": "b"}\r{"instruction": "c", "output": "d"}\r')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: holds carriage returns .* old Mac line endings"):
        read_jsonl(path)
    path.write_bytes(b'{"instruction": "a", "output": "b"}\r\n{"instruction": "c", "output": "d"}\r\n')
    assert [r.line for r in read_jsonl(path)] == [1, 2]  # Windows line endings are fine


@pytest.mark.parametrize(
    "row,field",
    [
        ({"instruction": "add"}, "output"),
        ({"output": "five"}, "instruction"),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "content"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
        ({"prompt": "x", "completion": "y"}, "messages"),
    ],
)
def test_missing_field_names_field_file_and_line(tmp_path, row, field):
    path = write_jsonl(tmp_path / "d.jsonl", [ALPACA[0], row])
    with pytest.raises(DataError, match=rf"d\.jsonl:2: .*'{field}'"):
        read_jsonl(path)


def test_forced_format_and_unknown_format(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT[0]])
    with pytest.raises(DataError, match=r"d\.jsonl:1: missing field 'instruction'"):
        read_jsonl(path, "alpaca")
    with pytest.raises(DataError, match="data.format"):
        read_jsonl(path, "sharegpt")


def test_empty_response_dropped_and_counted(hf, tmp_path):
    _, tok = hf
    rows = ALPACA + [
        {"instruction": "add two", "output": "  "},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
    ]
    bundle = build_jsonl_task(cfg(write_jsonl(tmp_path / "d.jsonl", rows), eval_fraction=0.25), tok)
    assert bundle.info["dropped_empty"] == 2 and bundle.info["dropped_truncated"] == 0
    assert len(bundle.train) + len(bundle.eval) == len(ALPACA)


def test_empty_dataset_names_the_file(hf, tmp_path):
    _, tok = hf
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataError, match=r"empty\.jsonl: no usable items"):
        build_jsonl_task(cfg(empty), tok)
    only_empty = write_jsonl(tmp_path / "blank.jsonl", [{"instruction": "x", "output": ""}])
    with pytest.raises(DataError, match=r"blank\.jsonl: no usable items.*dropped_empty=1"):
        build_jsonl_task(cfg(only_empty, eval_path=str(only_empty)), tok)
    with pytest.raises(DataError, match="no such JSONL file"):
        build_jsonl_task(cfg(tmp_path / "missing.jsonl"), tok)
    with pytest.raises(DataError, match="data.eval_fraction"):
        build_jsonl_task(cfg(write_jsonl(tmp_path / "ok.jsonl", ALPACA), eval_fraction=0.0), tok)


def test_drops_are_logged(hf, tmp_path, caplog):
    _, tok = hf
    rows = ALPACA + [{"instruction": "add two", "output": ""}]
    with caplog.at_level("WARNING", logger="qtune.data.jsonl"):
        build_jsonl_task(cfg(write_jsonl(tmp_path / "d.jsonl", rows), eval_fraction=0.25), tok)
    assert "kept 4 of 5 items; dropped 1 with an empty response" in caplog.text


def test_chat_template_error_names_line(hf, tmp_path):
    _, tok = hf
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no "
        "system role') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    old, tok.chat_template = tok.chat_template, strict
    try:
        with pytest.raises(DataError, match=r"d\.jsonl:1: the tokenizer's chat template .*no system"):
            build_jsonl_task(cfg(write_jsonl(tmp_path / "d.jsonl", CHAT), eval_fraction=0.3), tok)
    finally:
        tok.chat_template = old
