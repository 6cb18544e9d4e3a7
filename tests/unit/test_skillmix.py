from __future__ import annotations

import re

import pytest

from evals.skillmix import CATEGORIES, generate, split_of


def test_generation_is_deterministic_and_seeded():
    assert generate("test", 20, seed=3) == generate("test", 20, seed=3)
    assert generate("test", 20, seed=3) != generate("test", 20, seed=4)


def test_format_matches_mmlu_pro_rows():
    rows = generate("validation", 10)
    assert len(CATEGORIES) >= 8 and {r.category for r in rows} == set(CATEGORIES)
    for r in rows:
        assert re.fullmatch(r".+ The options are: \(A\) .+ \(B\) .+ \(C\) .+ \(D\) .+", r.question)
        options = dict(re.findall(r"\(([A-D])\) (\S+(?: \S+)*?)(?= \([A-D]\)|$)", r.question))
        assert len(set(options.values())) == 4, r.question  # distinct options
        assert r.gold_answer in options


def test_gold_answers_are_right():
    for r in generate("test", 30):
        gold = dict(re.findall(r"\(([A-D])\) (.+?)(?= \([A-D]\)|$)", r.question))[r.gold_answer]
        if r.category == "arithmetic":
            a, b = map(int, re.findall(r"\d+", r.question.split(" The options")[0]))
            assert int(gold) == a + b
        elif r.category == "strings":
            word = re.search(r"'(\w+)'", r.question).group(1)
            assert gold == word[::-1]
        elif r.category == "counting":
            letter, word = re.findall(r"'(\w+)'", r.question)
            assert int(gold) == word.count(letter)


def test_splits_are_disjoint_in_text_and_in_computed_problems():
    train = generate("train", 800)
    val = generate("validation", 60)
    test = generate("test", 60)
    texts = {
        s: {r.question for r in rows}
        for s, rows in (("train", train), ("val", val), ("test", test))
    }
    assert not texts["test"] & texts["train"]
    assert not texts["test"] & texts["val"]
    assert not texts["val"] & texts["train"]

    # computed skills: the underlying problem (operands) never crosses splits
    def sums(rows):
        return {
            tuple(sorted(map(int, re.findall(r"\d+", r.question.split(" The options")[0]))))
            for r in rows
            if r.category == "arithmetic"
        }

    assert not sums(test) & sums(train)


def test_split_assignment_is_stable():
    assert split_of("arithmetic", "12+49") == split_of("arithmetic", "12+49")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown split"):
        generate("dev", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown categories"):
        generate("test", 1, categories=("poetry",))
    with pytest.raises(ValueError, match="too few distinct"):
        generate("test", 50_000, categories=("dates",))
