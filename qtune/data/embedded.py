"""The embedded default task: a generated instruction-following SFT set with known label noise.

Deterministic from ``seed``. The training set mixes three kinds of item, so that analyses can
show which items (and which wrong-answer tokens) a pruning strategy trained on:

* ``clean``: a unique problem with its correct answer;
* ``noisy`` (``noise_fraction`` of the set): a unique problem with a wrong answer. A share
  ``near_miss_share`` of them are near misses (a digit off by one, two swapped characters), the
  rest carry the answer of another item of the same skill. ``true_response`` holds the right
  answer and ``wrong_positions`` the response token positions (0 = first response token, the
  eos included) whose label differs from the right one at that position;
* ``duplicate`` (``duplicate_fraction``): an exact copy of a clean item (``duplicate_of`` is
  that item's sample id): redundancy that costs compute and teaches nothing new.

The eval split is clean and shares no problem with the training set. Skills are balanced
(round-robin) in both splits.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any, Literal, Mapping, Optional

from qtune.config.declared import knob

from qtune.data.bundle import GenerationEval, TaskBundle
from qtune.data.packing_config import PackingKeys
from qtune.data.sft import SFTDataset, TokenizedExample, collate_sft
from qtune.data.skills import SKILLS, Problem, SkillSpec, check_skills, instruction_prompt, near_miss, sample_problem
from qtune.data.tokenizer import CharTokenizer


KINDS = ("clean", "noisy", "duplicate")


@dataclass
class EmbeddedConfig(PackingKeys):
    """The ``data=embedded`` group, declared: ``qtune.config.schema`` checks a config against
    these types and ranges before anything is built; ``__post_init__`` adds the cross-field
    rules."""

    num_train: int = knob(6000, ge=1)
    num_eval: int = knob(500, ge=1)
    seed: int = 0
    skills: list[Literal[SKILLS]] = knob(list(SKILLS))
    noise_fraction: float = knob(0.2, ge=0.0, le=1.0)  # share of training items with a wrong answer
    near_miss_share: float = knob(0.5, ge=0.0, le=1.0)  # share of the noisy items that are near misses
    duplicate_fraction: float = knob(0.1, ge=0.0, le=1.0)  # share of training items that copy a clean item
    max_digits: int = knob(2, ge=1)
    min_len: int = knob(2, ge=1)
    max_len: int = knob(6, ge=1)
    max_length: Optional[int] = knob(64, ge=1)  # token truncation of prompt + response
    drop_kinds: list[Literal[KINDS]] = knob([])  # leave these kinds out of training (e.g. the clean-only oracle)

    def __post_init__(self) -> None:
        self.skills = check_skills(self.skills)
        self.drop_kinds = tuple(self.drop_kinds)
        bad = sorted(set(self.drop_kinds) - set(KINDS))
        if bad:
            raise ValueError(f"data.drop_kinds: unknown kind(s) {bad}; kinds: {', '.join(KINDS)}")
        for key in ("noise_fraction", "near_miss_share", "duplicate_fraction"):
            if not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise ValueError(f"data.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.noise_fraction + self.duplicate_fraction > 1.0:
            raise ValueError("data.noise_fraction + data.duplicate_fraction must be <= 1")
        if self.num_train < 1 or self.num_eval < 1:
            raise ValueError("data.num_train and data.num_eval must be positive")
        if self.min_len > self.max_len:
            raise ValueError(f"data.min_len={self.min_len} must be at most data.max_len={self.max_len}")

    @property
    def spec(self) -> SkillSpec:
        return SkillSpec(max_digits=self.max_digits, min_len=self.min_len, max_len=self.max_len)


def config_from(cfg: Any = None, **overrides) -> EmbeddedConfig:
    """Accept an ``EmbeddedConfig``, a mapping or an OmegaConf node (the ``data`` group; its
    ``name`` is ignored). An unknown key is an error naming it."""
    if isinstance(cfg, EmbeddedConfig):
        values = asdict(cfg)
    else:
        if cfg is not None and not isinstance(cfg, Mapping):
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        values = dict(cfg or {})
    values.update(overrides)
    values.pop("name", None)
    values.pop("_target_", None)
    known = {f.name for f in fields(EmbeddedConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown embedded data option(s) {unknown}; known: {sorted(known)}")
    return EmbeddedConfig(**values)


def _unique_problems(n: int, skills, rng: random.Random, spec: SkillSpec, taken: set) -> list[Problem]:
    out = []
    for i in range(n):
        skill = skills[i % len(skills)]
        for _ in range(10_000):
            p = sample_problem(skill, rng, spec)
            if p.key not in taken:
                break
        else:
            raise ValueError(f"cannot draw {n} distinct '{skill}' problems; enlarge the skill sizes")
        taken.add(p.key)
        out.append(p)
    return out


def _wrong_positions(response_ids: list[int], true_ids: list[int]) -> list[int]:
    return [i for i, t in enumerate(response_ids) if i >= len(true_ids) or t != true_ids[i]]


def generate(cfg: EmbeddedConfig) -> tuple[list[dict], list[dict]]:
    """(train records, eval records): dicts with prompt, response and the analysis fields."""
    rng = random.Random(cfg.seed)
    spec, skills, taken = cfg.spec, cfg.skills, set()
    eval_problems = _unique_problems(cfg.num_eval, skills, rng, spec, taken)
    n_noisy = round(cfg.noise_fraction * cfg.num_train)
    n_dup = round(cfg.duplicate_fraction * cfg.num_train)
    n_unique = cfg.num_train - n_dup
    train_problems = _unique_problems(n_unique, skills, rng, spec, taken)

    records = [
        {
            "prompt": instruction_prompt(p),
            "response": p.answer,
            "true_response": p.answer,
            "skill": p.skill,
            "kind": "clean",
            "noise": None,
            "duplicate_of": None,
        }
        for p in train_problems
    ]
    noisy_idx = sorted(rng.sample(range(n_unique), n_noisy))
    n_near = round(cfg.near_miss_share * n_noisy)
    near_idx = set(rng.sample(noisy_idx, n_near))
    by_skill: dict[str, list[str]] = {}
    for p in train_problems:
        by_skill.setdefault(p.skill, []).append(p.answer)
    for i in noisy_idx:
        p, rec = train_problems[i], records[i]
        if i in near_idx:
            wrong, how = near_miss(p, rng), "near_miss"
        else:
            pool = by_skill[p.skill]
            wrong, how = p.answer, "other_answer"
            for _ in range(100):
                wrong = rng.choice(pool)
                if wrong != p.answer:
                    break
            if wrong == p.answer:  # a skill whose answers are all equal: fall back
                wrong, how = near_miss(p, rng), "near_miss"
        rec.update(response=wrong, kind="noisy", noise=how)

    clean_idx = [i for i, r in enumerate(records) if r["kind"] == "clean"]
    if n_dup and not clean_idx:
        raise ValueError("duplicates need clean items to copy; lower data.noise_fraction")
    for _ in range(n_dup):
        src = rng.choice(clean_idx)
        records.append(dict(records[src], kind="duplicate", duplicate_of=src))
    order = list(range(len(records)))
    rng.shuffle(order)
    new_pos = {old: new for new, old in enumerate(order)}
    train = [records[i] for i in order]
    for rec in train:  # duplicate_of refers to sample ids after the shuffle
        if rec["duplicate_of"] is not None:
            rec["duplicate_of"] = new_pos[rec["duplicate_of"]]

    evals = [
        {
            "prompt": instruction_prompt(p),
            "response": p.answer,
            "true_response": p.answer,
            "skill": p.skill,
            "kind": "clean",
            "noise": None,
            "duplicate_of": None,
        }
        for p in eval_problems
    ]
    return train, evals


def _encode(records: list[dict], tok) -> tuple[list[TokenizedExample], list[dict]]:
    if not isinstance(tok, CharTokenizer):  # a real (HF) tokenizer: chat form
        from qtune.data.embedded_chat import chat_encode

        return chat_encode(records, tok)
    examples, meta = [], []
    for rec in records:
        prompt_ids = tok.encode(rec["prompt"], add_bos=True)
        response_ids = tok.encode(rec["response"], add_eos=True)
        true_ids = tok.encode(rec["true_response"], add_eos=True)
        examples.append(TokenizedExample(prompt_ids, response_ids))
        meta.append(dict(rec, response_start=len(prompt_ids), wrong_positions=_wrong_positions(response_ids, true_ids)))
    return examples, meta


def build_embedded_task(cfg: Any = None, tokenizer: CharTokenizer | None = None) -> TaskBundle:
    """The default SFT task as a ``TaskBundle``. ``cfg`` is the ``data`` config group (or a
    mapping / ``EmbeddedConfig``); the tokenizer defaults to the built-in character one, which
    is the one the cached base model was saved with. A Hugging Face tokenizer renders every
    item in chat form instead (:mod:`qtune.data.embedded_chat`)."""
    c = config_from(cfg)
    tok = tokenizer or CharTokenizer()
    train_records, eval_records = generate(c)
    if c.drop_kinds:  # the same items minus some kinds; sample ids are positions in what is left
        train_records = [r for r in train_records if r["kind"] not in c.drop_kinds]
        for r in train_records:
            r["duplicate_of"] = None  # positions changed; the pointer would be stale
    train_ex, train_meta = _encode(train_records, tok)
    eval_ex, eval_meta = _encode(eval_records, tok)
    need = max(len(ex.prompt_ids) + len(ex.response_ids) for ex in train_ex + eval_ex)
    if c.max_length is not None and c.max_length < need:  # a cut answer teaches (and is scored against) a wrong target
        cut = sum(len(ex.prompt_ids) + len(ex.response_ids) > c.max_length for ex in train_ex)
        raise ValueError(
            f"data.max_length={c.max_length} cuts the responses of {cut} of "
            f"{len(train_ex)} training items (and eval items alike); these "
            f"items need up to {need} tokens: set data.max_length>={need}"
        )
    train = SFTDataset(train_ex, max_length=c.max_length, meta=train_meta)
    evals = SFTDataset(eval_ex, max_length=c.max_length, meta=eval_meta)
    targets = [ex.response_ids for ex in eval_ex]
    generation = GenerationEval(
        prompt_ids=[ex.prompt_ids for ex in eval_ex],
        target_ids=targets,
        groups=[m["skill"] for m in eval_meta],
        max_new_tokens=max(len(t) for t in targets),
    )
    kinds = Counter(m["kind"] for m in train_meta)
    info = {
        "config": asdict(c) | {"skills": list(c.skills), "drop_kinds": list(c.drop_kinds)},
        "train_kinds": dict(kinds),
        "train_noise": dict(Counter(m["noise"] for m in train_meta if m["noise"])),
        "train_skills": dict(Counter(m["skill"] for m in train_meta)),
        "wrong_response_tokens": sum(len(m["wrong_positions"]) for m in train_meta),
    }
    if isinstance(tok, CharTokenizer):
        eos_id, pad_id = tok.eos_id, tok.pad_id
    else:
        from qtune.data.embedded_chat import special_ids

        eos_id, pad_id = special_ids(tok)
        info["chat_form"] = True
    return TaskBundle(
        task="sft",
        train=train,
        eval=evals,
        collate=partial(collate_sft, pad_id=pad_id),
        train_meta=train_meta,
        generation=generation,
        tokenizer=tok,
        eos_id=eos_id,
        pad_id=pad_id,
        info=info,
    )
