"""The skills of the embedded task: problem sampling, the two surface formats, and corruptions.

One problem has two written forms. The *raw* form (``123+45=168``, ``rev(abc)=cba``) is what the
base model is pretrained on; the *instruction* form (``what is 123+45=?\\nA: `` -> ``168``) is
what fine-tuning teaches. The base therefore knows how to compute the answers but not how to
read the instructions, which is the regime where a model's loss and entropy on an SFT sample
carry information. Both forms are kept short: on a CPU, fine-tuning time is proportional to
tokens.

Near misses (a digit off by one, two swapped characters) are the wrong answers a model
memorises most readily, because they sit next to the right one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SKILLS = ("add", "reverse", "sort", "count", "copy")
ALL_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class SkillSpec:
    """Sizes of the problems: shared by the SFT set and the pretraining corpus."""

    max_digits: int = 2  # addition operands have 1..max_digits digits
    min_len: int = 2  # string length range for reverse / sort / copy / count
    max_len: int = 6
    letters: str = "abcdefghijklmnopqrstuvwxyz"
    count_letters: str = "abcde"  # a small alphabet, so counts are rarely all zero

    def __post_init__(self) -> None:
        if self.max_digits < 1 or not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"bad skill sizes: {self}")
        if not self.letters or not self.count_letters:
            raise ValueError("letters and count_letters must not be empty")

    def max_answer_len(self) -> int:
        return max(self.max_digits + 1, self.max_len, len(str(self.max_len)))


@dataclass(frozen=True)
class Problem:
    skill: str
    args: tuple
    answer: str

    @property
    def key(self) -> tuple:
        """Identity of the problem, independent of how it is written."""
        return (self.skill,) + self.args


def check_skills(skills) -> tuple[str, ...]:
    skills = tuple(skills)
    unknown = [s for s in skills if s not in SKILLS]
    if unknown or not skills:
        raise ValueError(f"unknown skills {unknown or skills}; choose from {list(SKILLS)}")
    return skills


def _number(rng: random.Random, max_digits: int) -> int:
    d = rng.randint(1, max_digits)
    return rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1)


def _word(rng: random.Random, spec: SkillSpec, letters: str | None = None) -> str:
    n = rng.randint(spec.min_len, spec.max_len)
    return "".join(rng.choice(letters or spec.letters) for _ in range(n))


def sample_problem(skill: str, rng: random.Random, spec: SkillSpec) -> Problem:
    if skill == "add":
        a, b = _number(rng, spec.max_digits), _number(rng, spec.max_digits)
        return Problem(skill, (a, b), str(a + b))
    if skill == "count":
        s = _word(rng, spec, spec.count_letters)
        c = rng.choice(spec.count_letters)
        return Problem(skill, (c, s), str(s.count(c)))
    s = _word(rng, spec)
    answer = {"reverse": s[::-1], "sort": "".join(sorted(s)), "copy": s}[skill]
    return Problem(skill, (s,), answer)


def raw_prompt(p: Problem) -> str:
    """Pretraining form, answer excluded: ``123+45=``, ``rev(abc)=``, ``count(a,abca)=``."""
    if p.skill == "add":
        return f"{p.args[0]}+{p.args[1]}="
    if p.skill == "count":
        return f"count({p.args[0]},{p.args[1]})="
    name = {"reverse": "rev", "sort": "sort", "copy": "copy"}[p.skill]
    return f"{name}({p.args[0]})="


def instruction_prompt(p: Problem) -> str:
    """Fine-tuning form, answer excluded: ``what is 12+34=?\\nA: ``, ``reverse abc\\nA: ``.

    The answer always follows the same ``\\nA: `` marker, never the raw form's ``=``, so the base
    scores 0 here before fine-tuning; keeping the familiar ``12+34=`` inside the question lets
    the (hardest) addition skill transfer within a few epochs."""
    if p.skill == "add":
        body = f"what is {p.args[0]}+{p.args[1]}=?"
    elif p.skill == "count":
        body = f"count {p.args[0]} in {p.args[1]}"
    else:
        body = f"{p.skill} {p.args[0]}"
    return f"{body}\nA: "


def near_miss(p: Problem, rng: random.Random) -> str:
    """A wrong answer next to the right one: a digit off by one for numbers, two swapped
    characters for strings (or one letter shifted when all characters are equal)."""
    ans = p.answer
    if p.skill in ("add", "count"):
        i = rng.randrange(len(ans))
        d = int(ans[i])
        first = rng.choice((-1, 1))
        for step in (first, -first):
            nd = d + step
            if 0 <= nd <= 9 and not (nd == 0 and i == 0 and len(ans) > 1):
                return ans[:i] + str(nd) + ans[i + 1 :]
        raise AssertionError("unreachable: some neighbouring digit is always valid")
    pairs = [(i, i + 1) for i in range(len(ans) - 1) if ans[i] != ans[i + 1]]
    if not pairs:
        pairs = [(i, j) for i in range(len(ans)) for j in range(i + 1, len(ans)) if ans[i] != ans[j]]
    if pairs:
        i, j = rng.choice(pairs)
        chars = list(ans)
        chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)
    i = rng.randrange(len(ans))  # all characters equal: shift one letter instead
    k = ALL_LETTERS.find(ans[i])
    return ans[:i] + ALL_LETTERS[(k + 1) % len(ALL_LETTERS)] + ans[i + 1 :]


def raw_corpus(n: int, seed: int, spec: SkillSpec, skills=SKILLS) -> list[Problem]:
    """``n`` problems, skills in round-robin order, deterministic from ``seed``."""
    skills = check_skills(skills)
    rng = random.Random(seed)
    return [sample_problem(skills[i % len(skills)], rng, spec) for i in range(n)]
