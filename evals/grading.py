"""Grading an expert's reply against a gold answer (the extraction rules are in
`orchestrator.answers`, which the experts' stages share)."""

from __future__ import annotations

from orchestrator.answers import extract_answer


def is_correct(
    text: str | None, gold: str, question: str | None = None, answer_type: str = "choice"
) -> bool:
    return extract_answer(text, question, answer_type) == gold
