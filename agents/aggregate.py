"""Combining experts' answers: the Mixture-of-Agents synthesis prompt, and a weighted vote.

An aggregator LLM gets the question and the experts' answers (reasoning inside `<think>`
blocks stripped) in the Mixture-of-Agents synthesis prompt and answers once. When its
answer names no option, the weighted vote over the experts' choices decides instead.
The vote is also an aggregator of its own, with no LLM call.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

from orchestrator.answers import extract_answer
from orchestrator.prompts import instruction_for
from workers.batch import Message

MOA_SYSTEM = (
    "You have been provided with a set of responses from various open-source models to the "
    "latest user query. Your task is to synthesize these responses into a single, "
    "high-quality response. It is crucial to critically evaluate the information provided "
    "in these responses, recognizing that some of it may be biased or incorrect. Your "
    "response should not simply replicate the given answers but should offer a refined, "
    "accurate, and comprehensive reply to the instruction. Ensure your response is "
    "well-structured, coherent, and adheres to the highest standards of accuracy and "
    "reliability.\n\nResponses from models:"
)

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)


def strip_think(text: str) -> str:
    """The answer without its `<think>...</think>` reasoning (an unclosed block runs to the
    end)."""
    return _THINK.sub("", text).strip()


def synthesis_messages(
    question: str, answers: Sequence[str], answer_type: str = "choice"
) -> list[Message]:
    """The aggregator's prompt: the MoA system message listing the answers, then the
    question with the usual instruction for its answer type."""
    listed = "\n".join(f"{i + 1}. {strip_think(a)}" for i, a in enumerate(answers))
    return [
        Message(role="system", content=f"{MOA_SYSTEM}\n{listed}"),
        Message(role="user", content=f"{instruction_for(answer_type)}\n\n{question}"),
    ]


def weighted_vote(
    question: str,
    answers: Sequence[str | None],
    weights: Sequence[float] | None = None,
    answer_type: str = "choice",
) -> str | None:
    """The answer with the most weight among the answers' choices (a letter, or an integer
    for `answer_type` 'integer'); None when none states one. A tie is a fair coin seeded
    by the question and the tied choices, not the answer that came first: the outcome
    does not depend on the order the experts are listed in (with unit weights on skillmix,
    first-come ties moved majority vote by 27 points between two orders of the same zoo)."""
    weights = list(weights) if weights is not None else [1.0] * len(answers)
    totals: dict[str, float] = {}
    for text, w in zip(answers, weights, strict=True):
        choice = extract_answer(text, question, answer_type)
        if choice is not None:
            totals[choice] = totals.get(choice, 0.0) + w
    if not totals:
        return None
    top = max(totals.values())
    tied = sorted(c for c, t in totals.items() if math.isclose(t, top, rel_tol=1e-9))
    if len(tied) == 1:
        return tied[0]
    return random.Random("|".join([question, *tied])).choice(tied)
