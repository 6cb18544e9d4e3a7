"""skillmix: a seeded multiple-choice benchmark whose questions need different skills.

Questions follow the MMLU-Pro format of `../shared/data/symbolic-moe/` (`question` with
the options inlined after "The options are:", `gold_answer` a letter, `category`), with
four options. Each category is one kind of skill, worded so the skill is recognisable
from the text: arithmetic, string reversal, letter counting, capitals and chemical
symbols (looked up in `evals/data/tables.json`), month arithmetic, unit conversion,
and alphabet positions.

Three disjoint splits: `train` (the experts' training data), `validation` (model
profiles are built from it) and `test` (reported). A question's split is a hash of its
problem: for computed skills the problem is the underlying instance (the numbers, the
word), so a test problem is never trained on in any wording; for looked-up facts it is
the full question text, since the fact itself must be learnt.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
LETTERS = "ABCD"
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


class Question(BaseModel):
    """One benchmark row, in the MMLU-Pro format plus an id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., description="Stable id: category, split and index.")
    question: str = Field(..., description="Question text with the options inlined.")
    gold_answer: str = Field(..., pattern="^[A-D]$", description="Letter of the right option.")
    category: str = Field(..., description="The skill the question needs.")


@dataclass(frozen=True)
class Problem:
    key: str | None  # the problem's identity for splitting; None: use the question text
    stem: str
    answer: str
    distractors: tuple[str, ...]


@cache
def tables() -> dict[str, dict[str, str]]:
    text = (Path(__file__).parent / "data" / "tables.json").read_text()
    data = json.loads(text)
    return {"capitals": data["capitals"], "elements": data["elements"]}


def _word(rng: random.Random) -> str:
    consonants, vowels = "BCDFGHKLMNPRSTVZ", "AEIOU"
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 3)))


def _near_numbers(rng: random.Random, answer: int, spread: list[int]) -> tuple[str, ...]:
    picks: list[int] = []
    for d in rng.sample(spread, len(spread)):
        if answer + d > 0 and answer + d not in picks:
            picks.append(answer + d)
        if len(picks) == 3:
            break
    return tuple(map(str, picks))


def arithmetic(rng: random.Random) -> Problem:
    # one carry-free column: a skill a million-parameter model learns from a few thousand
    # examples (with carries it memorises the training pairs instead, 45% on test)
    a = rng.randint(10, 99) * 10 + rng.randint(0, 8)
    b = rng.randint(1, 9 - a % 10)
    stem = rng.choice(
        [
            "What is {a} + {b}?",
            "Add {a} and {b}. What is the sum?",
            "Compute the sum of {a} and {b}.",
        ]
    ).format(a=a, b=b)
    return Problem(
        f"{a}+{b}",
        stem,
        str(a + b),
        _near_numbers(rng, a + b, [-3, -2, -1, 1, 2, 3]),
    )


def strings(rng: random.Random) -> Problem:
    w = _word(rng)
    stem = rng.choice(
        [
            "Reverse the letters of the word '{w}'.",
            "Spell the string '{w}' backwards.",
            "What is the string '{w}' written in reverse order?",
        ]
    ).format(w=w)
    rev = w[::-1]
    wrong = {w, rev[1:] + rev[0], rev[-1] + rev[:-1], rev[:2][::-1] + rev[2:]} - {rev}
    while len(wrong) < 3:
        s = list(rev)
        rng.shuffle(s)
        if "".join(s) != rev:
            wrong.add("".join(s))
    return Problem(w, stem, rev, tuple(sorted(wrong))[:3])


def counting(rng: random.Random) -> Problem:
    # the count is drawn first (0-4), so "1" is not the answer to most questions
    n = rng.randint(0, 4)
    c = rng.choice(string.ascii_uppercase)
    letters = [x for x in _word(rng) + _word(rng) if x != c][: rng.randint(4, 7)]
    for pos in sorted(rng.sample(range(len(letters) + n), n)):
        letters.insert(pos, c)
    w = "".join(letters)
    stem = rng.choice(
        [
            "How many times does the letter '{c}' appear in the word '{w}'?",
            "Count the occurrences of the letter '{c}' in '{w}'.",
        ]
    ).format(c=c, w=w)
    return Problem(
        f"{c}:{w}",
        stem,
        str(n),
        tuple(str(x) for x in rng.sample([m for m in range(0, 7) if m != n], 3)),
    )


def _lookup(rng: random.Random, table: dict[str, str], templates: list[str]) -> Problem:
    name = rng.choice(sorted(table))
    answer = table[name]
    others = rng.sample(sorted(set(table.values()) - {answer}), 3)
    return Problem(None, rng.choice(templates).format(x=name), answer, tuple(others))


def geography(rng: random.Random) -> Problem:
    return _lookup(
        rng,
        tables()["capitals"],
        [
            "What is the capital city of {x}?",
            "Which city is the capital of {x}?",
            "Name the capital of the country {x}.",
        ],
    )


def chemistry(rng: random.Random) -> Problem:
    return _lookup(
        rng,
        tables()["elements"],
        [
            "What is the chemical symbol for the element {x}?",
            "Which symbol denotes {x} on the periodic table?",
            "The chemical element {x} has which symbol?",
        ],
    )


def dates(rng: random.Random) -> Problem:
    # up to five months ahead (60 facts): month arithmetic a small model learns in minutes
    m, k = rng.randrange(12), rng.randint(1, 5)
    stem = rng.choice(
        [
            "Which month comes {k} months after {m}?",
            "If it is {m} now, what month will it be in {k} months?",
        ]
    ).format(k=k, m=MONTHS[m])
    answer = MONTHS[(m + k) % 12]
    wrong = [MONTHS[(m + k + d) % 12] for d in rng.sample([-2, -1, 1, 2, 3], 3)]
    return Problem(None, stem, answer, tuple(wrong))  # 60 facts: split by text


UNITS = [
    ("centimeters", "meters", 100),
    ("grams", "kilograms", 1000),
    ("meters", "kilometers", 1000),
    ("milliliters", "liters", 1000),
    ("millimeters", "centimeters", 10),
    ("centimeters", "decimeters", 10),
]


def units(rng: random.Random) -> Problem:
    small, big, factor = rng.choice(UNITS)
    n = rng.randint(2, 99)
    stem = rng.choice(
        ["How many {s} are in {n} {b}?", "Convert {n} {b} to {s}.", "{n} {b} equals how many {s}?"]
    ).format(s=small, b=big, n=n)
    wrong = [n * f for f in (10, 100, 1000, 10000) if f != factor]
    return Problem(f"{big}:{n}", stem, str(n * factor), tuple(map(str, wrong)))


def alphabet(rng: random.Random) -> Problem:
    i, k = rng.randrange(20), rng.randint(1, 5)
    letters = string.ascii_lowercase
    stem = rng.choice(
        [
            "Which letter comes {k} places after '{l}' in the alphabet?",
            "Counting forward {k} places from '{l}' in the alphabet, which letter do you reach?",
        ]
    ).format(k=k, l=letters[i])
    answer = letters[i + k]
    wrong = [
        letters[j]
        for j in rng.sample([j for j in range(max(0, i - 2), min(26, i + 8)) if j != i + k], 3)
    ]
    return Problem(None, stem, answer, tuple(wrong))  # 100 facts: split by text


GENERATORS: dict[str, Callable[[random.Random], Problem]] = {
    "arithmetic": arithmetic,
    "strings": strings,
    "counting": counting,
    "geography": geography,
    "chemistry": chemistry,
    "dates": dates,
    "units": units,
    "alphabet": alphabet,
}
CATEGORIES: tuple[str, ...] = tuple(GENERATORS)

#: Share of problems in each split, by hash bucket out of 100.
SPLIT_BUCKETS: dict[Split, range] = {
    "train": range(0, 70),
    "validation": range(70, 85),
    "test": range(85, 100),
}


def split_of(category: str, key: str) -> Split:
    bucket = int.from_bytes(hashlib.sha256(f"{category}|{key}".encode()).digest()[:4], "big") % 100
    for split, rng_ in SPLIT_BUCKETS.items():
        if bucket in rng_:
            return split
    raise AssertionError(bucket)


def render(problem: Problem, rng: random.Random) -> tuple[str, str]:
    options = [problem.answer, *problem.distractors[:3]]
    rng.shuffle(options)
    inline = " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return f"{problem.stem} The options are: {inline}", LETTERS[options.index(problem.answer)]


def generate(
    split: Split, per_category: int, seed: int = 0, categories: tuple[str, ...] = CATEGORIES
) -> list[Question]:
    """`per_category` distinct questions of each category in `split`, deterministic in `seed`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    unknown = sorted(set(categories) - set(GENERATORS))
    if unknown:
        raise ValueError(f"unknown categories {unknown}; known: {', '.join(CATEGORIES)}")
    rows: list[Question] = []
    for category in categories:
        rng = random.Random(f"skillmix:{seed}:{split}:{category}")
        seen: set[str] = set()
        misses = 0
        while len(seen) < per_category:
            misses += 1
            if misses > 20_000:  # nothing new in a long while: the split is exhausted
                raise ValueError(
                    f"category {category!r} has too few distinct {split} questions for "
                    f"{per_category}; ask for fewer"
                )
            problem = GENERATORS[category](rng)
            text, gold = render(problem, rng)
            if split_of(category, problem.key or text) != split or text in seen:
                continue
            seen.add(text)
            misses = 0
            rows.append(
                Question(
                    id=f"{category}-{split}-{len(seen) - 1}",
                    question=text,
                    gold_answer=gold,
                    category=category,
                )
            )
    return rows
