"""Benchmark loaders: local JSON, JSONL and Parquet files of MMLU-Pro, GPQA, MedMCQA and
AIME, in the Symbolic-MoE format or the upstream field names, plus skillmix.

Every row becomes an `Item` in one shape: the question with its options inlined as
"The options are: (A) ... (B) ..." (the Symbolic-MoE format), the gold answer (a letter,
or an integer as a string for AIME), the category, and `answer_type` ("choice" or
"integer"), which picks the prompt and the grading. The format is recognised per row from
its fields, so a file may mix formats; a row that fits none, or whose answer does not fit
its options, raises a `DatasetError` naming the file, the line (JSONL) or row (JSON,
Parquet) and the field.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from orchestrator.conclave import Item
from orchestrator.errors import ConfigError

LETTERS = "ABCDEFGHIJ"
SHARED_HINT = (
    "give 'skillmix' or a .json, .jsonl or .parquet file of MMLU-Pro, GPQA, MedMCQA or AIME rows"
)


class DatasetError(ConfigError):
    """A dataset file is missing, unreadable or has a malformed row."""


def inline_options(question: str, options: list[str]) -> str:
    text = " ".join(f"({LETTERS[i]}) {str(o).strip()}" for i, o in enumerate(options))
    return f"{question.strip()} The options are: {text}"


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row of a JSON, JSONL or Parquet file; `where` is 'line N' or
    'row N' (1-based) for error messages."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"line {n}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError(
                f"{path}: line {e.lineno}: not valid JSON ({e.msg}); a .json dataset is one "
                "JSON list of rows (use .jsonl for one row per line)"
            ) from None
        if isinstance(data, dict):  # {"data": [...]} / {"rows": [...]}, as some exports
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else data
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        for n, row in enumerate(data, 1):
            yield f"row {n}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise DatasetError(f"{path}: not a readable Parquet file ({e})") from None
        for n, row in enumerate(table.to_pylist(), 1):
            yield f"row {n}", row
    else:
        raise DatasetError(f"{path}: unknown file type {suffix!r}; use .json, .jsonl or .parquet")


def _field(row: dict[str, Any], where: str, *names: str) -> Any:
    for n in names:
        if n in row and row[n] is not None:
            return row[n]
    raise DatasetError(f"{where}: missing field {' or '.join(repr(n) for n in names)}")


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str | int | float) or not str(value).strip():
        raise DatasetError(f"{where}: field {name!r} must be non-empty text, got {value!r}")
    return str(value)


def _integer(value: Any, where: str, name: str) -> str:
    text = str(value).strip()
    try:
        return str(int(text))
    except ValueError:
        raise DatasetError(f"{where}: field {name!r} must be an integer, got {value!r}") from None


def parse_row(row: Any, where: str, index: int, stem: str, seed: int = 0) -> Item:
    """One row in any of the supported formats -> an Item."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: a row must be an object with fields, got {row!r:.60}")
    rid = str(row.get("id") or row.get("question_id") or f"{stem}-{index}")
    if "Correct Answer" in row:  # GPQA: the correct option is always first upstream
        q = _text(_field(row, where, "Question"), where, "Question")
        right = _text(row["Correct Answer"], where, "Correct Answer").strip()
        wrong = [
            _text(_field(row, where, f"Incorrect Answer {i}"), where, f"Incorrect Answer {i}")
            for i in (1, 2, 3)
        ]
        options = [right, *(w.strip() for w in wrong)]
        random.Random(f"gpqa:{seed}:{rid}").shuffle(options)
        return Item(
            id=rid,
            question=inline_options(q, options),
            gold_answer=LETTERS[options.index(right)],
            category=row.get("Subdomain") or row.get("High-level domain"),
        )
    if "opa" in row:  # MedMCQA
        q = _text(_field(row, where, "question"), where, "question")
        options = [_text(_field(row, where, f"op{c}"), where, f"op{c}") for c in "abcd"]
        cop = _field(row, where, "cop")
        if not isinstance(cop, int) or not 0 <= cop <= 3:
            raise DatasetError(f"{where}: field 'cop' must be 0-3 (the right option), got {cop!r}")
        return Item(
            id=rid,
            question=inline_options(q, options),
            gold_answer=LETTERS[cop],
            category=row.get("subject_name"),
        )
    if "options" in row:  # MMLU-Pro upstream
        q = _text(_field(row, where, "question"), where, "question")
        options = row["options"]
        if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
            raise DatasetError(f"{where}: field 'options' must be a list of 2-10 options")
        gold = row.get("answer")
        if gold is None and isinstance(row.get("answer_index"), int):
            gold = LETTERS[row["answer_index"]]
        if not isinstance(gold, str) or gold not in LETTERS[: len(options)]:
            raise DatasetError(
                f"{where}: field 'answer' must be a letter A-{LETTERS[len(options) - 1]} "
                f"naming one of the {len(options)} options, got {gold!r}"
            )
        return Item(
            id=rid,
            question=inline_options(q, [str(o) for o in options]),
            gold_answer=gold,
            category=row.get("category"),
        )
    if "problem" in row or "Problem" in row:  # AIME upstream
        q = _text(_field(row, where, "problem", "Problem"), where, "problem")
        gold = _integer(_field(row, where, "answer", "Answer"), where, "answer")
        return Item(id=rid, question=q, gold_answer=gold, answer_type="integer")
    # the Symbolic-MoE format: options inlined; a letter, or an integer (AIME)
    q = _text(_field(row, where, "question"), where, "question")
    gold = str(_field(row, where, "gold_answer", "answer")).strip()
    if "The options are:" in q:
        from evals.grading import options_of

        letters = options_of(q)
        if gold not in letters:
            raise DatasetError(
                f"{where}: field 'gold_answer' is {gold!r}, not one of the question's option "
                f"letters {', '.join(letters) or '(none found)'}"
            )
        return Item(id=rid, question=q, gold_answer=gold, category=row.get("category"))
    if len(gold) == 1 and gold in LETTERS:
        raise DatasetError(
            f"{where}: field 'gold_answer' is the letter {gold!r} but the question has no "
            "inlined options (' The options are: (A) ... (B) ...')"
        )
    gold = _integer(gold, where, "gold_answer")
    return Item(
        id=rid, question=q, gold_answer=gold, category=row.get("category"), answer_type="integer"
    )


def load_file(path: str | Path, seed: int = 0) -> list[Item]:
    """Every row of a local dataset file, as Items (ids unique within the file)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist; {SHARED_HINT}")
    items: list[Item] = []
    seen: set[str] = set()
    for index, (where, row) in enumerate(_rows(path)):
        item = parse_row(row, f"{path}: {where}", index, path.stem, seed)
        if item.id in seen:
            raise DatasetError(f"{path}: {where}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise DatasetError(f"{path}: no rows")
    return items


def load_dataset(
    dataset: str,
    split: str = "test",
    *,
    limit: int | None = None,
    categories: Iterable[str] | None = None,
    seed: int = 0,
    per_category: int = 25,
) -> list[Item]:
    """Items of `dataset`: 'skillmix' (generated; `per_category` questions of each
    category in `split`) or a path to a local file (its own rows; `split` is ignored).
    `categories` keeps those categories; `limit` keeps the first N per category for
    skillmix, the first N rows for a file."""
    cats = tuple(categories or ())
    if dataset == "skillmix":
        from evals.skillmix import CATEGORIES, SPLITS, generate

        if split not in SPLITS:
            raise DatasetError(f"unknown skillmix split {split!r}; choose one of {SPLITS}")
        unknown = sorted(set(cats) - set(CATEGORIES))
        if unknown:
            raise DatasetError(
                f"unknown skillmix categories {unknown}; choose from {', '.join(CATEGORIES)}"
            )
        n = min(per_category, limit) if limit else per_category
        rows = generate(split, n, seed=seed, categories=cats or CATEGORIES)  # type: ignore[arg-type]
        return [Item(**q.model_dump()) for q in rows]
    items = load_file(dataset, seed)
    if cats:
        have = {i.category for i in items}
        missing = sorted(set(cats) - have)
        if missing:
            raise DatasetError(
                f"{dataset}: no rows of categories {missing}; it has "
                f"{', '.join(sorted(str(c) for c in have))}"
            )
        items = [i for i in items if i.category in cats]
    return items[:limit] if limit else items
