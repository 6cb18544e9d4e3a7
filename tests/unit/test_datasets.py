"""Dataset loaders on the real Symbolic-MoE files, the upstream formats, and bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from evals.datasets import load_dataset
from orchestrator.answers import options_of
from orchestrator.formats import ROW_FORMATS, DatasetError, inline_options, load_file
from orchestrator.types import Item

SHARED = Path(__file__).parents[3] / "shared/data/symbolic-moe"


def test_real_mmlu_pro_files_load_with_letters_and_categories():
    test = load_file(SHARED / "MMLU_Pro_test.json")
    assert len(test) == 2100
    cats = {i.category for i in test}
    assert len(cats) == 14 and "biology" in cats
    assert all(i.answer_type == "choice" and i.gold_answer in options_of(i.question) for i in test)
    assert test[0].id == "MMLU_Pro_test-0"
    some = load_dataset(str(SHARED / "MMLU_Pro_train.json"), categories=["law"], limit=5)
    assert len(some) == 5 and {i.category for i in some} == {"law"}


def test_limit_on_a_file_draws_that_many_per_category_with_the_seed():
    """--limit on a file: N per category, drawn with the seed, in the file's order (its
    first rows are all one category), the same draw for the same seed."""
    path = str(SHARED / "MMLU_Pro_test.json")
    assert {i.category for i in load_file(path)[:40]} == {"biology"}  # why not the first N
    some = load_dataset(path, limit=3, seed=0)
    by = Counter(i.category for i in some)
    assert len(by) == 14 and set(by.values()) == {3}
    order = [int(i.id.rsplit("-", 1)[1]) for i in some]
    assert order == sorted(order)
    assert [i.id for i in load_dataset(path, limit=3, seed=0)] == [i.id for i in some]
    assert [i.id for i in load_dataset(path, limit=3, seed=1)] != [i.id for i in some]
    assert len(load_dataset(path, limit=1000)) == 2100  # fewer than N: all of them


def test_real_aime_files_are_integer_answers():
    rows = load_file(SHARED / "AIME24_test.json")
    assert len(rows) == 30
    assert all(i.answer_type == "integer" and i.gold_answer.isdigit() for i in rows)
    assert rows[0].gold_answer == "33"


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_upstream_formats_jsonl(tmp_path):
    rows = [
        {"question": "2+2?", "options": ["3", "4", "5"], "answer": "B", "category": "math"},
        {"question": "Which?", "options": ["x", "y"], "answer_index": 0, "category": "misc"},
        {
            "question": "Organ?",
            "opa": "heart",
            "opb": "lung",
            "opc": "skin",
            "opd": "bone",
            "cop": 2,
            "subject_name": "Anatomy",
        },
        {
            "Question": "Which particle?",
            "Correct Answer": "muon",
            "Incorrect Answer 1": "a",
            "Incorrect Answer 2": "b",
            "Incorrect Answer 3": "c",
            "Subdomain": "Physics",
        },
        {"problem": "Find n.", "answer": "042"},
    ]
    items = load_file(_jsonl(tmp_path / "mixed.jsonl", rows))
    mmlu, idx, med, gpqa, aime = items
    assert mmlu.question == "2+2? The options are: (A) 3 (B) 4 (C) 5" and mmlu.gold_answer == "B"
    assert idx.gold_answer == "A" and idx.category == "misc"
    assert options_of(med.question)[med.gold_answer] == "skin" and med.category == "Anatomy"
    assert options_of(gpqa.question)[gpqa.gold_answer] == "muon"
    assert gpqa.category == "Physics"
    assert aime.answer_type == "integer" and aime.gold_answer == "42"


def test_gpqa_shuffle_is_seeded_and_not_always_first(tmp_path):
    rows = [
        {
            "Question": f"Q{i}?",
            "Correct Answer": "right",
            "Incorrect Answer 1": "w1",
            "Incorrect Answer 2": "w2",
            "Incorrect Answer 3": "w3",
        }
        for i in range(20)
    ]
    path = _jsonl(tmp_path / "gpqa.jsonl", rows)
    first = [i.gold_answer for i in load_file(path, seed=0)]
    assert first == [i.gold_answer for i in load_file(path, seed=0)]
    assert len(set(first)) > 1  # the right answer is not always (A)


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mmlu.parquet"
    pq.write_table(
        pa.table(
            {
                "question": ["What is 1+1?"],
                "options": [["1", "2", "3", "4"]],
                "answer": ["B"],
                "answer_index": [1],
                "category": ["math"],
            }
        ),
        path,
    )
    (item,) = load_file(path)
    assert item.gold_answer == "B" and options_of(item.question)["B"] == "2"


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ('{"question": "x", "gold_answer": "7"}\n{bad json\n', "bad.jsonl", "line 2: not valid"),
        ('{"question": "x", "gold_answer": "A"}\n', "noopts.jsonl", "has no inlined options"),
        ('{"question": "x? The options are: (A) 1 (B) 2"}\n', "nogold.jsonl", "'gold_answer'"),
        (
            '{"question": "x? The options are: (A) 1 (B) 2", "gold_answer": "C"}\n',
            "letter.jsonl",
            "line 1: field 'gold_answer' is 'C', not one of",
        ),
        ('{"problem": "p", "answer": "twelve"}\n', "aime.jsonl", "must be an integer"),
        (
            '{"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 7}\n',
            "med.jsonl",
            "'cop' must be 0-3",
        ),
        ('[{"question": "q", "options": ["a"], "answer": "A"}]', "one.json", "row 1: field"),
        ('{"rows": 3}', "notalist.json", "expected a JSON list"),
        ("a,b\n1,2\n", "table.csv", "unknown file type '.csv'"),
    ],
)
def test_malformed_files_name_file_line_and_field(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError) as e:
        load_file(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_missing_file_and_unknown_categories(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_file(tmp_path / "nope.json")
    gz = tmp_path / "rows.jsonl"  # gzip bytes under a .jsonl name
    gz.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    with pytest.raises(DatasetError, match="rows.jsonl: not UTF-8 text"):
        load_file(gz)
    with pytest.raises(DatasetError, match="no rows of categories"):
        load_dataset(str(SHARED / "MMLU_Pro_train.json"), categories=["astrology"])
    with pytest.raises(DatasetError, match="unknown skillmix categories"):
        load_dataset("skillmix", categories=["astrology"])


def test_skillmix_by_name_with_limit_and_categories():
    rows = load_dataset("skillmix", "validation", limit=3, categories=["units", "dates"])
    assert [r.category for r in rows] == ["units"] * 3 + ["dates"] * 3
    assert all("-validation-" in r.id for r in rows)


class _Trivia:
    """A row format from outside the package: {"prompt", "choices": {letter: text}, "key"}."""

    def detect(self, row: dict[str, object]) -> bool:
        return "prompt" in row and "choices" in row

    def parse(self, row: dict[str, object], where: str, rid: str, seed: int) -> Item:
        choices = row["choices"]
        if not isinstance(choices, dict) or row.get("key") not in choices:
            raise DatasetError(f"{where}: field 'key' must name one of the choices")
        letters = sorted(choices)
        return Item(
            id=rid,
            question=inline_options(str(row["prompt"]), [choices[k] for k in letters]),
            gold_answer="ABCDEFGHIJ"[letters.index(row["key"])],
            category="trivia",
        )


def test_a_row_format_registered_from_outside_loads_through_load_dataset(tmp_path):
    toy = {"id": "t1", "prompt": "Red planet?", "choices": {"a": "Venus", "b": "Mars"}, "key": "b"}
    upstream = {"question": "2+2?", "options": ["3", "4"], "answer": "B", "category": "math"}
    path = _jsonl(tmp_path / "mixed.jsonl", [toy, upstream])
    ROW_FORMATS.add("toy-trivia", _Trivia())
    try:
        first, second = load_dataset(str(path))
        assert first.id == "t1" and first.category == "trivia"
        assert first.question == "Red planet? The options are: (A) Venus (B) Mars"
        assert first.gold_answer == "B" and options_of(first.question) == {
            "A": "Venus",
            "B": "Mars",
        }
        assert second.category == "math" and second.gold_answer == "B"  # built-ins still apply
        bad = _jsonl(tmp_path / "bad.jsonl", [{**toy, "key": "z"}])
        with pytest.raises(DatasetError, match="line 1: field 'key'"):
            load_dataset(str(bad))
    finally:
        ROW_FORMATS.remove("toy-trivia")
    assert "toy-trivia" not in ROW_FORMATS
    with pytest.raises(DatasetError, match="missing field 'question'"):  # the fallback's error
        load_dataset(str(path))
