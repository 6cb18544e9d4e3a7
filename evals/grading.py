"""Answer extraction and grading, as in Symbolic-MoE: the last "(X)" letter wins."""

from __future__ import annotations

import re

_ANSWER_IS = re.compile(r"answer is \(?([A-J])\)?", re.IGNORECASE)
_PAREN = re.compile(r"\(([A-J])\)")


def extract_choice(text: str | None) -> str | None:
    """The chosen letter: the last "The answer is (X)", else the last "(X)", else None."""
    if not text:
        return None
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1].upper()
    found = _PAREN.findall(text)
    return found[-1] if found else None


def is_correct(text: str | None, gold: str) -> bool:
    return extract_choice(text) == gold
