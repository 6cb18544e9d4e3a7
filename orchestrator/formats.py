"""Dataset formats: local files of benchmark rows into `Item`s.

Every row becomes an `Item` in one shape: the question with its options inlined as
"The options are: (A) ... (B) ..." (the Symbolic-MoE format), the gold answer (a letter,
or an integer as a string for AIME), the category, and `answer_type` ("choice" or
"integer"), which picks the prompt and the grading.

Two registries make this extensible by name:
- `FILE_TYPES`: a file suffix -> a reader yielding (where, row) pairs. Built in: .json,
  .jsonl, .parquet.
- `ROW_FORMATS`: a `RowFormat` recognises its rows by their fields (`detect`) and turns
  one into an Item (`parse`). Built in: `gpqa`, `medmcqa`, `mmlu-pro` (upstream field
  names), `aime` (upstream), and `symbolic-moe` (the paper's format, the fallback).
  Formats are tried in registration order, the fallback last, so a file may mix formats.

A row that fits none, or whose answer does not fit its options, raises a `DatasetError`
naming the file, the line (JSONL) or row (JSON, Parquet) and the field. This module sits
in the foundation (not in `evals/`) because backends read answer keys with it too.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from orchestrator.answers import options_of
from orchestrator.errors import ConfigError
from orchestrator.registry import Registry
from orchestrator.types import Item

LETTERS = "ABCDEFGHIJ"
SHARED_HINT = (
    "give 'skillmix' or a .json, .jsonl or .parquet file of MMLU-Pro, GPQA, MedMCQA or AIME rows"
)
#: the format tried last, for rows no other format recognises
FALLBACK = "symbolic-moe"


class DatasetError(ConfigError):
    """A dataset file is missing, unreadable or has a malformed row."""


class RowFormat(Protocol):
    """One benchmark's row layout. `detect` looks only at field names; `parse` raises
    `DatasetError` naming `where` and the field when the row is malformed."""

    def detect(self, row: dict[str, Any]) -> bool: ...

    def parse(self, row: dict[str, Any], where: str, rid: str, seed: int) -> Item: ...


FileReader = Callable[[Path], Iterator[tuple[str, Any]]]

FILE_TYPES: Registry[FileReader] = Registry("dataset file type", "--data (the file's suffix)")
ROW_FORMATS: Registry[RowFormat] = Registry("dataset row format", "--data rows")


def inline_options(question: str, options: list[str]) -> str:
    text = " ".join(f"({LETTERS[i]}) {str(o).strip()}" for i, o in enumerate(options))
    return f"{question.strip()} The options are: {text}"


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}: line {n}: not valid JSON ({e.msg})") from None


def _json(path: Path) -> Iterator[tuple[str, Any]]:
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


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DatasetError(f"{path}: not a readable Parquet file ({e})") from None
    for n, row in enumerate(table.to_pylist(), 1):
        yield f"row {n}", row


FILE_TYPES.add(".jsonl", _jsonl)
FILE_TYPES.add(".json", _json)
FILE_TYPES.add(".parquet", _parquet)


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row of a file; `where` is 'line N' or 'row N' (1-based)."""
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DatasetError(
            f"{path}: unknown file type {suffix!r}; use {', '.join(FILE_TYPES.names())}"
        )
    try:
        yield from FILE_TYPES.get(suffix)(path)
    except UnicodeDecodeError as e:  # a binary file named .json(l) by mistake
        raise DatasetError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); a {suffix} dataset is "
            "text: give the file itself, not a compressed or binary one"
        ) from None


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


class GPQA:
    """GPQA upstream: the correct option is always first there, so options are shuffled
    (seeded by the row's id)."""

    def detect(self, row: dict[str, Any]) -> bool:
        return "Correct Answer" in row

    def parse(self, row: dict[str, Any], where: str, rid: str, seed: int) -> Item:
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


class MedMCQA:
    def detect(self, row: dict[str, Any]) -> bool:
        return "opa" in row

    def parse(self, row: dict[str, Any], where: str, rid: str, seed: int) -> Item:
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


class MMLUPro:
    """MMLU-Pro upstream: an `options` list and an `answer` letter (or `answer_index`)."""

    def detect(self, row: dict[str, Any]) -> bool:
        return "options" in row

    def parse(self, row: dict[str, Any], where: str, rid: str, seed: int) -> Item:
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


class AIME:
    def detect(self, row: dict[str, Any]) -> bool:
        return "problem" in row or "Problem" in row

    def parse(self, row: dict[str, Any], where: str, rid: str, seed: int) -> Item:
        q = _text(_field(row, where, "problem", "Problem"), where, "problem")
        gold = _integer(_field(row, where, "answer", "Answer"), where, "answer")
        return Item(id=rid, question=q, gold_answer=gold, answer_type="integer")


class SymbolicMoE:
    """The paper's format: options inlined in `question`; a letter, or an integer (AIME)."""

    def detect(self, row: dict[str, Any]) -> bool:
        return "question" in row

    def parse(self, row: dict[str, Any], where: str, rid: str, seed: int) -> Item:
        q = _text(_field(row, where, "question"), where, "question")
        gold = str(_field(row, where, "gold_answer", "answer")).strip()
        if "The options are:" in q:
            letters = options_of(q)
            if gold not in letters:
                raise DatasetError(
                    f"{where}: field 'gold_answer' is {gold!r}, not one of the question's "
                    f"option letters {', '.join(letters) or '(none found)'}"
                )
            return Item(id=rid, question=q, gold_answer=gold, category=row.get("category"))
        if len(gold) == 1 and gold in LETTERS:
            raise DatasetError(
                f"{where}: field 'gold_answer' is the letter {gold!r} but the question has no "
                "inlined options (' The options are: (A) ... (B) ...')"
            )
        gold = _integer(gold, where, "gold_answer")
        return Item(
            id=rid,
            question=q,
            gold_answer=gold,
            category=row.get("category"),
            answer_type="integer",
        )


ROW_FORMATS.add("gpqa", GPQA())
ROW_FORMATS.add("medmcqa", MedMCQA())
ROW_FORMATS.add("mmlu-pro", MMLUPro())
ROW_FORMATS.add("aime", AIME())
ROW_FORMATS.add(FALLBACK, SymbolicMoE())


def parse_row(row: Any, where: str, index: int, stem: str, seed: int = 0) -> Item:
    """One row in any registered format -> an Item."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: a row must be an object with fields, got {row!r:.60}")
    rid = str(row.get("id") or row.get("question_id") or f"{stem}-{index}")
    for name in [*(n for n in ROW_FORMATS.ordered() if n != FALLBACK), FALLBACK]:
        fmt = ROW_FORMATS.get(name)
        if name == FALLBACK or fmt.detect(row):
            return fmt.parse(row, where, rid, seed)
    raise AssertionError("unreachable: the fallback format takes every row")


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
