"""Local JSONL instruction data (Alpaca or chat form) as a tokenised SFT task.

Line formats, detected per line (``format: auto``) or forced (``alpaca`` / ``chat``):

* Alpaca: ``{"instruction": str, "input": str (optional), "output": str}``
* chat: ``{"messages": [{"role": ..., "content": ...}, ...]}``. The *last* assistant message
  is the response; every message before it is the prompt; messages after it are ignored.

Either form may carry a ``"group"`` string (a category, a source): the generation eval then
reports its metrics per group as well.

Prompts use the tokenizer's chat template when it has one (rendered with
``add_generation_prompt=True``, Alpaca lines become one user message), else a plain
Alpaca-style template preceded by the tokenizer's bos token. The tokenizer's eos token is
appended to every response so the model learns to stop. Labels are response-only (see
:mod:`qtune.data.sft`).

Items that carry no training signal are dropped and counted, never silently trained on:

* ``dropped_empty``: the response is empty or whitespace only;
* ``dropped_truncated``: the prompt alone fills ``max_length``, so truncation (which keeps the
  prompt first and cuts the response from the right) would leave no response token.

Items kept whose response is cut by ``max_length`` (its end, end-of-sequence token included, is
not trained: the model never learns where that answer stops) are counted as ``cut_responses``
and logged.

Anything else that is wrong with a line (bad JSON, a missing or mistyped field) is a
:class:`DataError` naming ``file:line``, because guessing would train on the wrong thing.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from qtune.data.bundle import GenerationEval, TaskBundle
from qtune.data.sft import SFTDataset, TokenizedExample, collate_sft

FORMATS = ("auto", "alpaca", "chat")
log = logging.getLogger(__name__)


class DataError(ValueError):
    """Unusable input data; the message names the file, and the line or field when known."""


@dataclass
class Record:
    """One parsed line: the prompt as chat messages, the response text, where it came from."""

    messages: list[dict[str, str]]
    response: str
    line: int
    form: str  # "alpaca" or "chat"
    group: str | None = None  # optional "group" field: per-group eval metrics


# ----------------------------------------------------------------------------- parsing


def _field(obj: dict, key: str, where: str, *, required: bool = True) -> str | None:
    if key not in obj or (obj[key] is None and required):
        if required:
            raise DataError(f"{where}: missing field '{key}'")
        return None
    value = obj[key]
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON allows "\ud800"; no tokenizer does
        raise DataError(
            f"{where}: field '{key}' is not valid Unicode ({exc.reason} at character {exc.start})"
        ) from None
    return value


def _parse_alpaca(obj: dict, where: str, line: int) -> Record:
    instruction = _field(obj, "instruction", where)
    extra = _field(obj, "input", where, required=False)
    output = _field(obj, "output", where)
    content = instruction if not extra else f"{instruction}\n\n{extra}"
    return Record(
        [{"role": "user", "content": content}], output, line, "alpaca", _field(obj, "group", where, required=False)
    )


def _parse_chat(obj: dict, where: str, line: int) -> Record:
    if "messages" not in obj:
        raise DataError(f"{where}: missing field 'messages'")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list")
    clean: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise DataError(f"{where}: messages[{i}] must be an object with 'role' and 'content'")
        role = _field(msg, "role", f"{where}: messages[{i}]")
        content = _field(msg, "content", f"{where}: messages[{i}]")
        clean.append({"role": role, "content": content})
    last = max((i for i, m in enumerate(clean) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(
            f"{where}: field 'messages' has no message with role 'assistant' "
            "(the last assistant message is the response)"
        )
    return Record(clean[:last], clean[last]["content"], line, "chat", _field(obj, "group", where, required=False))


class _DuplicateKey(Exception):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json's default keeps a repeated key's last value silently; a data file means one."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_line(text: str, path: str | Path, line: int, fmt: str = "auto") -> Record:
    """Parse one non-blank JSONL line; errors name ``path:line``."""
    where = f"{path}:{line}"
    body = text.rstrip("\n")
    if "\r" in body.rstrip("\r"):  # CR-only line endings: the whole file reads as one line
        raise DataError(
            f"{where}: holds carriage returns (CR) inside the line: the file uses old Mac line "
            "endings; convert them to LF (one JSON object per line)"
        )
    try:
        obj = json.loads(body.rstrip(), object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
    except _DuplicateKey as e:
        raise DataError(f"{where}: the key {e.args[0]!r} appears twice in one object; keep one") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    form = fmt
    if fmt == "auto":
        if "messages" in obj:
            form = "chat"
        elif "instruction" in obj or "output" in obj:
            form = "alpaca"
        else:
            raise DataError(f"{where}: missing field 'messages' (chat form) or 'instruction'/'output' (Alpaca form)")
    return _parse_chat(obj, where, line) if form == "chat" else _parse_alpaca(obj, where, line)


def read_jsonl(path: str | Path, fmt: str = "auto") -> list[Record]:
    """All records of a JSONL file (blank lines skipped); raises :class:`DataError`."""
    if fmt not in FORMATS:
        raise DataError(f"data.format must be one of {list(FORMATS)}, got {fmt!r}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such JSONL file")
    records = []
    with path.open("rb") as fh:  # decoded per line, so a bad byte is reported with its line
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if text.strip():
                records.append(parse_line(text, path, line_no, fmt))
    return records


# ----------------------------------------------------------------------------- tokenising

PLAIN_ROLES = {"system": "System", "user": "Instruction", "assistant": "Response"}


def plain_prompt(messages: Sequence[dict[str, str]]) -> str:
    """Alpaca-style prompt for tokenizers without a chat template.

    A single user turn renders as ``### Instruction:\\n...\\n\\n### Response:\\n``; more turns
    repeat the ``### Role:`` blocks in order, always ending with the response header.
    """
    parts = [f"### {PLAIN_ROLES.get(m['role'], m['role'].capitalize())}:\n{m['content']}\n\n" for m in messages]
    return "".join(parts) + "### Response:\n"


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _render_chat(tokenizer, rec: Record, path) -> str:
    try:
        return tokenizer.apply_chat_template(rec.messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # templates raise their own errors, e.g. on role order
        raise DataError(f"{path}:{rec.line}: the tokenizer's chat template rejected this conversation: {e}") from e


def tokenize_records(
    records: Sequence[Record], tokenizer, max_length: int | None = None, path: str | Path = "<jsonl>"
) -> tuple[list[TokenizedExample], list[dict], dict[str, int]]:
    """Tokenise records into (prompt, response+eos) pairs, dropping items without signal.

    Returns ``(examples, meta, info)`` with ``meta`` per kept item (source line and form) and
    ``info = {"dropped_empty": n, "dropped_truncated": m}``.
    """
    info = {"dropped_empty": 0, "dropped_truncated": 0, "cut_responses": 0}
    kept = [r for r in records if r.response.strip()]
    info["dropped_empty"] = len(records) - len(kept)
    template = getattr(tokenizer, "chat_template", None)
    if template:
        prompts = [_render_chat(tokenizer, r, path) for r in kept]
        prefix: list[int] = []  # the template decides about bos
    else:
        prompts = [plain_prompt(r.messages) for r in kept]
        bos = getattr(tokenizer, "bos_token_id", None)
        prefix = [bos] if bos is not None else []
    eos = getattr(tokenizer, "eos_token_id", None)
    suffix = [eos] if eos is not None else []
    prompt_ids = _ids(tokenizer, prompts)
    response_ids = _ids(tokenizer, [r.response for r in kept])
    examples, meta = [], []
    for rec, p, r in zip(kept, prompt_ids, response_ids):
        p = prefix + p
        if max_length is not None and len(p) >= max_length:
            info["dropped_truncated"] += 1
            continue
        if max_length is not None and len(p) + len(r) + len(suffix) > max_length:
            info["cut_responses"] += 1  # kept, but its end (eos included) is not trained
        examples.append(TokenizedExample(p, r + suffix))
        meta.append({"line": rec.line, "format": rec.form} | ({"group": rec.group} if rec.group is not None else {}))
    return examples, meta, info


def load_jsonl_examples(
    path: str | Path, tokenizer, fmt: str = "auto", max_length: int | None = None
) -> tuple[list[TokenizedExample], list[dict], dict[str, int]]:
    """Read and tokenise one file: ``(examples, meta, info)``; no usable item is an error."""
    records = read_jsonl(path, fmt)
    examples, meta, info = tokenize_records(records, tokenizer, max_length, path)
    _require_items(path, len(records), examples, info)
    return examples, meta, info


def load_jsonl_dataset(
    path: str | Path, tokenizer, fmt: str = "auto", max_length: int | None = None
) -> tuple[SFTDataset, dict[str, int]]:
    """Read, tokenise and truncate one file into an :class:`SFTDataset`; empty is an error."""
    examples, meta, info = load_jsonl_examples(path, tokenizer, fmt, max_length)
    return SFTDataset(examples, max_length=max_length, meta=meta), info


def generation_eval(examples: Sequence[TokenizedExample], meta: Sequence[dict]) -> GenerationEval:
    """The eval split's prompts and full reference responses (never truncated: a reference is
    what the answer should be), grouped when every item carries a ``group``."""
    groups = [m.get("group") for m in meta]
    return GenerationEval(
        prompt_ids=[ex.prompt_ids for ex in examples],
        target_ids=[ex.response_ids for ex in examples],
        groups=groups if groups and all(g is not None for g in groups) else None,
        max_new_tokens=max(len(ex.response_ids) for ex in examples),
    )


def _require_items(path, n_records: int, examples: Sequence, info: dict) -> None:
    if info["dropped_empty"] or info["dropped_truncated"]:
        log.warning(
            "%s: kept %d of %d items; dropped %d with an empty response and %d whose response was entirely truncated",
            path,
            len(examples),
            n_records,
            info["dropped_empty"],
            info["dropped_truncated"],
        )
    if info.get("cut_responses"):
        log.warning(
            "%s: %d kept items have their response cut by data.max_length (end-of-sequence token "
            "included); counted as cut_responses",
            path,
            info["cut_responses"],
        )
    if not examples:
        raise DataError(
            f"{path}: no usable items (read {n_records} records; "
            f"dropped_empty={info['dropped_empty']}, "
            f"dropped_truncated={info['dropped_truncated']})"
        )


# ----------------------------------------------------------------------------- task


def _split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, eval) index lists; eval holds round(fraction*n), at least 1."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(fraction * n)), n - 1)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def build_jsonl_task(cfg: Any, tokenizer) -> TaskBundle:
    """TaskBundle (task="sft") from ``cfg.path``; eval from ``cfg.eval_path`` or a held-out
    ``cfg.eval_fraction`` of the file, chosen deterministically from ``cfg.seed``.

    ``info`` holds the drop counts summed over both splits, per-split counts under ``train``
    and ``eval``, and the split sizes.
    """
    path = cfg.get("path")
    if not path:
        raise DataError("data.path must name a JSONL file (data=jsonl data.path=FILE)")
    fmt = cfg.get("format", "auto") or "auto"
    max_length = cfg.get("max_length") or None
    eval_path = cfg.get("eval_path")
    if eval_path:
        train, train_info = load_jsonl_dataset(path, tokenizer, fmt, max_length)
        eval_ex, eval_meta, eval_info = load_jsonl_examples(eval_path, tokenizer, fmt, max_length)
        evalset = SFTDataset(eval_ex, max_length, meta=eval_meta)
    else:
        fraction = float(cfg.get("eval_fraction", 0.1))
        if not 0.0 < fraction < 1.0:
            raise DataError(f"data.eval_fraction must be in (0, 1) when data.eval_path is not set, got {fraction}")
        records = read_jsonl(path, fmt)
        examples, meta, info = tokenize_records(records, tokenizer, max_length, path)
        _require_items(path, len(records), examples, info)
        if len(examples) < 2:
            raise DataError(
                f"{path}: only {len(examples)} usable item; holding out an eval "
                "split needs at least 2 (or set data.eval_path)"
            )
        tr, ev = _split(len(examples), fraction, int(cfg.get("seed", 0)))
        train = SFTDataset([examples[i] for i in tr], max_length, meta=[meta[i] for i in tr])
        eval_ex, eval_meta = [examples[i] for i in ev], [meta[i] for i in ev]
        evalset = SFTDataset(eval_ex, max_length, meta=eval_meta)
        # drops happen before the split, so they are reported once, on the training side
        train_info, eval_info = info, {"dropped_empty": 0, "dropped_truncated": 0}
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    info = {k: train_info[k] + eval_info[k] for k in ("dropped_empty", "dropped_truncated")}
    info.update(train=train_info, eval=eval_info, train_size=len(train), eval_size=len(evalset))
    return TaskBundle(
        task="sft",
        train=train,
        eval=evalset,
        collate=partial(collate_sft, pad_id=pad_id),
        train_meta=train.meta,
        generation=generation_eval(eval_ex, eval_meta),
        tokenizer=tokenizer,
        eos_id=tokenizer.eos_token_id,
        pad_id=pad_id,
        info=info,
    )
