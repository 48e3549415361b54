"""The pretrained base of the default model: built once, deterministically, then reused.

The tiny Llama is pretrained on a clean corpus of the embedded task's skills in raw form
(``123+45=168``) so that, when fine-tuning starts, its loss and entropy on an instruction item
mean something (from random init they barely do, and loss-based pruning has nothing to read).

The result is cached under ``model.cache_dir``, else ``$QTUNE_CACHE``, else ``~/.cache/qtune``,
in ``base/tiny_llama-<hash>``, where the hash covers the architecture, the ``base`` recipe and
the vocabulary, so a changed recipe builds a new base and an unchanged one is never rebuilt.
The directory is written under a file lock (parallel ranks or multirun jobs build it once; the
others wait and reuse it) into a temporary directory that is renamed into place, so a
half-written base is never seen. Weights are reproducible for a given recipe, torch version and
thread count (CPU reductions may round differently with another thread count).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict
from typing import Any, Callable

import torch

from qtune.data.skills import SkillSpec, check_skills, raw_corpus, raw_prompt, sample_problem
from qtune.data.tokenizer import CharTokenizer
from qtune.models.base_recipe import BaseRecipe
from qtune.models.tiny_llama import arch_from, build_tiny_llama, num_parameters, to_dict

META_FILE = "qtune_base.json"
UNHASHED = {"log_every"}  # knobs that do not change the weights
DEFAULT_BASE = {k: v for k, v in asdict(BaseRecipe()).items() if k not in UNHASHED}


def cache_root() -> str:
    return os.environ.get("QTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qtune")


def base_recipe(model_cfg: Any = None) -> dict:
    """The ``base`` block of a model config completed with the defaults (unknown keys are an
    error naming them)."""
    cfg = to_dict(model_cfg)
    given = to_dict(cfg.get("base"))
    unknown = sorted(set(given) - set(DEFAULT_BASE) - UNHASHED)
    if unknown:
        raise ValueError(f"unknown model.base option(s) {unknown}; known: {sorted(DEFAULT_BASE)}")
    recipe = dict(DEFAULT_BASE, log_every=100)
    recipe.update({k: v for k, v in given.items() if v is not None})
    recipe["skills"] = list(check_skills(recipe["skills"]))
    if recipe["loss_on"] not in ("all", "answer"):
        raise ValueError(f"model.base.loss_on must be 'all' or 'answer', got {recipe['loss_on']!r}")
    return recipe


def base_key(model_cfg: Any = None) -> str:
    """Hash of everything that determines the base weights: architecture, recipe, vocabulary."""
    recipe = {k: v for k, v in base_recipe(model_cfg).items() if k not in UNHASHED}
    blob = json.dumps(
        {"arch": arch_from(model_cfg), "base": recipe, "vocab": CharTokenizer().to_dict(), "format": 1}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def base_path(model_cfg: Any = None, cache_dir: str | None = None) -> str:
    return os.path.join(cache_dir or cache_root(), "base", f"tiny_llama-{base_key(model_cfg)}")


def load_or_build_base(
    model_cfg: Any = None, cache_dir: str | None = None, log: Callable[[str], None] | None = None
) -> str:
    """Path of the cached base for ``model_cfg`` (the ``model`` config group), pretraining and
    caching it first when it is missing."""
    from filelock import FileLock

    log = log or _print
    final = base_path(model_cfg, cache_dir or to_dict(model_cfg).get("cache_dir"))
    if os.path.isfile(os.path.join(final, META_FILE)):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with FileLock(final + ".lock"):
        if os.path.isfile(os.path.join(final, META_FILE)):  # another process built it meanwhile
            return final
        log(f"[qtune] building the base model in {final} (first use; it is cached afterwards)")
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(final))
        try:
            model, tok, meta = pretrain_base(model_cfg, log=log)
            model.save_pretrained(tmp)
            tok.save(tmp)
            with open(os.path.join(tmp, META_FILE), "w") as f:
                json.dump(meta, f, indent=1)
            if os.path.isdir(final):  # a leftover without meta file: incomplete, replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def load_base(path: str):
    """(model, tokenizer) from a base directory."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path), CharTokenizer.load(path)


def load_base_model(model_cfg: Any = None, cache_dir: str | None = None, log: Callable[[str], None] | None = None):
    """(model, tokenizer) of the cached base for ``model_cfg``, built first when missing."""
    return load_base(load_or_build_base(model_cfg, cache_dir, log))


def _batch(problems, tok: CharTokenizer, answer_only: bool = False, pack: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and labels for ``problems``, ``pack`` of them per sequence, each ended by eos
    (``<bos>12+34=46<eos>rev(abc)=cba<eos>...``). Packing puts problems at varied positions
    after varied text, so the skills do not hinge on sitting right after bos."""
    seqs, labs = [], []
    for start in range(0, len(problems), pack):
        ids, lab = [tok.bos_id], [-100]
        for p in problems[start : start + pack]:
            q = tok.encode(raw_prompt(p))
            a = tok.encode(p.answer, add_eos=True)
            ids += q + a
            lab += ([-100] * len(q) if answer_only else q) + a
        seqs.append(ids)
        labs.append(lab)
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), tok.pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), length), -100, dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labs)):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, : len(s)] = torch.tensor(lab)
    return ids, labels


def raw_generation_eval(recipe: dict, tok: CharTokenizer, n: int | None = None):
    """Held-out raw-format problems (a seed stream the training batches never use)."""
    from qtune.data.bundle import GenerationEval

    spec = _spec(recipe)
    problems = raw_corpus(n or recipe["eval_items"], recipe["seed"] + 1_000_003, spec, recipe["skills"])
    return GenerationEval(
        prompt_ids=[tok.encode(raw_prompt(p), add_bos=True) for p in problems],
        target_ids=[tok.encode(p.answer, add_eos=True) for p in problems],
        groups=[p.skill for p in problems],
        max_new_tokens=spec.max_answer_len() + 1,
    )


def pretrain_base(model_cfg: Any = None, log: Callable[[str], None] | None = None):
    """Plain-torch pretraining on freshly sampled raw problems (no epochs, no overfitting):
    AdamW, linear warmup then cosine decay, full-sequence next-token loss. Deterministic for a
    given recipe and thread count."""
    from qtune.eval.greedy import greedy_exact_match

    log = log or _print
    recipe, tok = base_recipe(model_cfg), CharTokenizer()
    spec, skills = _spec(recipe), recipe["skills"]
    t0 = time.time()
    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        try:
            torch.manual_seed(recipe["seed"])
            model = build_tiny_llama(model_cfg, tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
            model.train()
            decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
            no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
            opt = torch.optim.AdamW(
                [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
                lr=recipe["lr"],
                betas=(0.9, 0.95),
                **_fused(),
            )
            rng = random.Random(recipe["seed"])
            steps, bs, pack = int(recipe["steps"]), int(recipe["batch_size"]), int(recipe["pack"])
            log_every = max(int(recipe.get("log_every") or 100), 1)
            running = 0.0
            for step in range(steps):
                for g in opt.param_groups:
                    g["lr"] = recipe["lr"] * _lr_factor(step, steps, recipe["warmup_steps"], recipe["min_lr_ratio"])
                n = bs * pack
                problems = [sample_problem(skills[(step * n + i) % len(skills)], rng, spec) for i in range(n)]
                ids, labels = _batch(problems, tok, recipe["loss_on"] == "answer", pack)
                loss = model(input_ids=ids, labels=labels).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if recipe["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
                opt.step()
                running += loss.item()
                if (step + 1) % log_every == 0 or step + 1 == steps:
                    done = (step % log_every) + 1
                    log(
                        f"[qtune] base pretraining step {step + 1}/{steps} loss {running / done:.4f} "
                        f"({time.time() - t0:.0f}s)"
                    )
                    running = 0.0
            train_s = time.time() - t0
            em = greedy_exact_match(model, raw_generation_eval(recipe, tok), tok.eos_id, tok.pad_id)
        finally:
            torch.use_deterministic_algorithms(det)
    model.eval()
    log(
        f"[qtune] base ready: raw-format exact match {em['exact_match']:.3f} "
        f"{em['per_group']} in {time.time() - t0:.0f}s"
    )
    meta = {
        "key": base_key(model_cfg),
        "arch": arch_from(model_cfg),
        "base": recipe,
        "parameters": num_parameters(model),
        "raw_exact_match": em["exact_match"],
        "raw_exact_match_per_skill": em["per_group"],
        "train_time_s": round(train_s, 2),
        "build_time_s": round(time.time() - t0, 2),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "built_at": time.time(),
    }
    return model, tok, meta


def _fused() -> dict:
    """Fused AdamW where this torch has it on CPU (fewer kernel launches per step)."""
    import inspect

    return {"fused": True} if "fused" in inspect.signature(torch.optim.AdamW).parameters else {}


def _print(msg: str) -> None:
    print(msg, flush=True)


def _lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _spec(recipe: dict) -> SkillSpec:
    return SkillSpec(max_digits=recipe["max_digits"], min_len=recipe["min_len"], max_len=recipe["max_len"])
