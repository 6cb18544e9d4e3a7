"""Answer extraction and grading, as in Symbolic-MoE: the last "(X)" letter wins; for
integer answers (AIME), the last \\boxed{N} or "The answer is N", matched exactly.

An answer that names no letter but states an option's text ("The answer is Paris.") is
matched against the question's inlined options, as harnesses do for free-form answers:
the zoo's tiny specialists answer that way, and so do real models now and then.
"""

from __future__ import annotations

import re

# the letter is case-sensitive and stands alone: "answer is Bucharest" names no letter B
_ANSWER_IS = re.compile(r"(?i:answer is) \(?([A-J])\)?(?![\w])")
_PAREN = re.compile(r"\(([A-J])\)")
_ANSWER_TEXT = re.compile(r"(?i:answer is):?[ \t]*([^\n]*)")
_OPTION = re.compile(r"\(([A-J])\) (.*?)(?= \([A-J]\) |\s*$)", re.DOTALL)


def options_of(question: str) -> dict[str, str]:
    """The options inlined in an MMLU-Pro style question: letter -> text."""
    _, sep, tail = question.rpartition("The options are:")
    return {k: v.strip() for k, v in _OPTION.findall(tail if sep else question)}


def _clean(text: str) -> str:
    return text.strip().strip("*\"'`").rstrip(".").strip().casefold()


_CUT_OPTION = re.compile(r"\(([A-J])\) ([^()]*)$")


def _without_echo(text: str, question: str) -> str:
    """`text` without the question's own options: base models often repeat the prompt,
    and an echoed "(J) ..." is not a choice. An echo cut off mid-option goes too."""
    options = options_of(question)
    for letter, option in options.items():
        text = text.replace(f"({letter}) {option}", " ")
    cut = _CUT_OPTION.search(text)
    if cut and cut.group(2).strip() and options.get(cut.group(1), "").startswith(cut.group(2)):
        text = text[: cut.start()]
    return text


def extract_choice(text: str | None, question: str | None = None) -> str | None:
    """The chosen letter: the last "The answer is (X)", else the last "(X)" that is not
    part of an echo of the question's options, else (given the question) the option whose
    text the last "The answer is ..." states, else None."""
    if not text:
        return None
    found: list[str] = _ANSWER_IS.findall(text)  # one group: findall gives its strings
    if found:
        return found[-1]
    found = _PAREN.findall(_without_echo(text, question) if question else text)
    if found:
        return found[-1]
    stated = _ANSWER_TEXT.findall(text)
    if question and stated:
        said = _clean(stated[-1])
        matches = [k for k, v in options_of(question).items() if _clean(v) == said]
        if len(matches) == 1:
            return matches[0]
    return None


_BOXED = re.compile(r"\\boxed\{\s*(-?\d[\d,]*)\s*\}")
_ANSWER_INT = re.compile(r"(?i:answer is):?\s*\**\$?\s*(-?\d[\d,]*)\b")


def extract_integer(text: str | None) -> str | None:
    """The integer an answer states (AIME): the last \\boxed{N}, else the last "The answer
    is N"; None when it states none (a bare number in the reasoning is not an answer)."""
    if not text:
        return None
    found = _BOXED.findall(text) or _ANSWER_INT.findall(text)
    if not found:
        return None
    try:
        return str(int(found[-1].replace(",", "")))
    except ValueError:
        return None


def extract_answer(
    text: str | None, question: str | None, answer_type: str = "choice"
) -> str | None:
    """The answer in the form its gold answer has: a letter, or an integer as a string;
    None for a free-form ('text') question, which has no form to check."""
    if answer_type == "text":
        return None
    if answer_type == "integer":
        return extract_integer(text)
    return extract_choice(text, question)
