"""``tokens.html``: a self-contained page showing what a run trained on, token by token.

Rows come from a run's exported plans (``export_plan=true``): ``plans/tokens_epoch_NNN.json``
for strategies that mask tokens (coordinates are label positions: label j predicts input token
j + 1), else ``plans/epoch_NNN.json``, where a kept sample trains all its response tokens and a
dropped one none. On the embedded task the items are regenerated from the run's data config
(``summary.data_info.config``) and decoded with ``CharTokenizer``, with each item's kind and
its wrong-answer tokens marked; on other tasks the page shows label positions only.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np

from qtune.report.collect import Run, strategy_class

CSS = """body{font-family:sans-serif;margin:1.5em}h2{margin-top:1.6em}
.row{margin:.35em 0;padding:.3em;border-bottom:1px solid #eee}
.meta{font-size:.8em;color:#444;margin-bottom:.2em}
.t{font-family:monospace;white-space:pre;padding:1px 0;font-size:.95em}
.prompt{color:#999}.kept{background:#b8e6b8}.masked{background:#f5b5b5;text-decoration:line-through}
.wrong{outline:2px solid #c00;outline-offset:-1px}.pos{padding:1px 4px;margin:1px;display:inline-block}
.badge{padding:0 5px;border-radius:3px;margin-right:4px}.clean{background:#dbe9f6}
.noisy{background:#f7d4d4}.duplicate{background:#fbe3c4}.legend span{margin-right:1em}"""

JS = """function f(){const s=document.getElementById('st').value,k=document.getElementById('kd').value;
document.querySelectorAll('.row').forEach(r=>{r.style.display=((s==''||r.dataset.status==s)&&
(k==''||r.dataset.kind==k))?'':'none'})}"""


def plan_rows(run: Run, max_rows: int | None = None) -> tuple[int, list[dict], int] | None:
    """(epoch, the first ``max_rows`` rows of sample_id/response/kept, how many rows the plan
    has) of the run's last exported epoch, or None.

    Only the rows returned are built: a plan of 1e7 samples is read as text and its ids parsed
    into one integer array (a sample plan), or its first rows decoded one by one (a token
    plan); building a dict per sample to show 80 took 2.25 GB at 1e7.
    """
    plans = run.path / "plans"
    token_files = sorted(plans.glob("tokens_epoch_*.json"))
    if token_files:
        text = token_files[-1].read_text()
        epoch = _epoch(text, len(token_files) - 1)
        return (epoch, *_first_token_rows(text, max_rows))
    sample_files = sorted(plans.glob("epoch_*.json"))
    if not sample_files:
        return None
    text = sample_files[-1].read_text()
    n = int(run.summary.get("train_samples_total", 0))
    shown = n if max_rows is None else min(n, max(0, int(max_rows)))
    ids = _sample_ids(text)
    kept = np.zeros(shown, dtype=bool)
    kept[ids[(ids >= 0) & (ids < shown)]] = True
    rows = [_sample_row(i, bool(kept[i])) for i in range(shown)]
    return _epoch(text, len(sample_files) - 1), rows, n


def _sample_row(sample_id: int, kept: bool) -> dict:
    return {"sample_id": sample_id, "response": None, "kept": kept}


def _epoch(text: str, default: int) -> int:
    m = re.search(r'"epoch"\s*:\s*(-?\d+)', text)
    return int(m.group(1)) if m else default


def _array_start(text: str, key: str) -> int:
    """Index just past the ``[`` that opens the top-level array ``key`` of a plan file."""
    m = re.search(rf'"{key}"\s*:\s*\[', text)
    if m is None:
        raise ValueError(f"plan file has no {key!r} array")
    return m.end()


def _sample_ids(text: str) -> np.ndarray:
    """The ``sample_ids`` array of a sample plan as int64, parsed in C (no Python int each)."""
    start = _array_start(text, "sample_ids")
    body = text[start : text.index("]", start)]
    if not body.strip():
        return np.zeros(0, dtype=np.int64)
    return np.fromstring(body, dtype=np.int64, sep=",")


_DECODER = json.JSONDecoder()


def _first_token_rows(text: str, max_rows: int | None) -> tuple[list[dict], int]:
    """(the first ``max_rows`` rows of a token plan, decoded one at a time; the row count)."""
    pos = _array_start(text, "rows")
    total = text.count('"sample_id"', pos)
    rows: list[dict] = []
    limit = total if max_rows is None else min(total, max(0, int(max_rows)))
    while len(rows) < limit:
        while text[pos] in " \t\r\n,":
            pos += 1
        row, pos = _DECODER.raw_decode(text, pos)
        rows.append(row)
    return rows, total


def tokens_run(runs: list[Run]) -> Run | None:
    """Prefer a run with token-level plans (the strategy that ranks itself first for the plane,
    ``PruningStrategy.plane_rank``, first), else one with sample plans."""

    def has(r: Run, pattern: str) -> bool:
        return any((r.path / "plans").glob(pattern))

    def rank(r: Run) -> tuple[bool, int]:
        claimed = strategy_class(r.strategy).plane_rank(r.strategy_cfg)
        return not has(r, "tokens_epoch_*.json"), 2 if claimed is None else claimed

    ranked = sorted(runs, key=rank)
    for r in ranked:
        if has(r, "tokens_epoch_*.json") or has(r, "epoch_*.json"):
            return r
    return None


def _embedded_items(run: Run):
    """(train dataset, meta, tokenizer) regenerated from the run's data config, or None."""
    cfg = (run.summary.get("data_info") or {}).get("config")
    if run.task != "embedded" or not cfg:
        return None
    from qtune.data.embedded import build_embedded_task

    bundle = build_embedded_task(cfg)
    return bundle.train, bundle.train_meta, bundle.tokenizer


def _row_html(row: dict, items) -> str:
    sid = int(row["sample_id"])
    response = row["response"]
    kept_field = row["kept"]
    meta, tokens = {}, None
    if items is not None:
        train, metas, tok = items
        ids = train.input_ids[sid].tolist()
        labels = train.labels[sid].tolist()
        meta = metas[sid]
        if response is None:  # a sample-level plan: every response label position
            response = [j for j in range(len(ids) - 1) if labels[j + 1] != -100]
        start = int(meta.get("response_start", 0))
        wrong = {start + w - 1 for w in meta.get("wrong_positions") or []}
        tokens = (ids, tok, wrong)
    response = list(response if response is not None else [0])
    kept = set(response) if kept_field is True else set() if kept_field is False else set(kept_field)
    status = "dropped" if not kept else "kept" if kept >= set(response) else "token-pruned"
    kind = str(meta.get("kind", ""))
    info = [
        f"<span class='badge {kind}'>{kind}</span>" if kind else "",
        f"sample {sid}",
        f"skill {meta['skill']}" if meta.get("skill") else "",
        f"{status}: {len(kept & set(response))}/{len(response)} response tokens trained",
        f"true answer {html.escape(repr(meta['true_response']))}"
        if kind == "noisy" and meta.get("true_response") is not None
        else "",
    ]
    if tokens is None:
        strip = "".join(f"<span class='t pos {'kept' if j in kept else 'masked'}'>{j}</span>" for j in response)
    else:
        ids, tok, wrong = tokens
        resp = set(response)
        parts = []
        for i, tid in enumerate(ids):
            text = html.escape(tok.decode([tid], skip_special=False).replace("\n", "⏎"))
            j = i - 1  # the label position that predicts this token
            cls = ("kept" if j in kept else "masked") if j in resp else "prompt"
            cls += " wrong" if j in wrong else ""
            parts.append(f"<span class='t {cls}'>{text}</span>")
        strip = "".join(parts)
    return (
        f"<div class='row' data-status='{status}' data-kind='{kind}'>"
        f"<div class='meta'>{' · '.join(x for x in info if x)}</div>{strip}</div>"
    )


def write_tokens_html(by_task: dict[str, list[Run]], out: Path, max_rows: int = 80) -> Path:
    """One section per task (the chosen run's last exported epoch, first ``max_rows`` rows)."""
    sections = []
    for task, runs in sorted(by_task.items()):
        run = tokens_run(runs)
        plan = plan_rows(run, max_rows) if run is not None else None
        if plan is None:
            sections.append(
                f"<h2>{html.escape(task)}</h2><p>No exported plans (run with <code>export_plan=true</code>).</p>"
            )
            continue
        epoch, rows, total = plan
        items = _embedded_items(run)
        body = "".join(_row_html(r, items) for r in rows)
        sections.append(
            f"<h2>{html.escape(task)}: {html.escape(run.strategy)}, seed "
            f"{run.summary.get('seed')}, epoch {epoch}</h2><p class='meta'>{html.escape(str(run.path))}"
            f" · first {len(rows)} of {total} planned rows"
            f"{'' if items else ' · label positions (no decoder for this task)'}</p>{body}"
        )
    legend = (
        "<p class='legend'><span class='t prompt'>prompt</span><span class='t kept'>kept "
        "response token</span><span class='t masked'>masked / dropped response token</span>"
        "<span class='t wrong'>wrong-answer token (noisy item)</span></p>"
    )
    filters = (
        "<p>status <select id='st' onchange='f()'><option value=''>all</option>"
        "<option>kept</option><option>token-pruned</option><option>dropped</option></select>"
        " kind <select id='kd' onchange='f()'><option value=''>all</option><option>clean"
        "</option><option>noisy</option><option>duplicate</option></select></p>"
    )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qtune: trained tokens</title>"
        f"<style>{CSS}</style><script>{JS}</script></head><body><h1>What each run trained on"
        f"</h1>{legend}{filters}{''.join(sections)}</body></html>"
    )
    path = out / "tokens.html"
    path.write_text(page, encoding="utf-8")
    return path
