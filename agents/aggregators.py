"""Aggregators: how one question's expert answers become its final answer.

    class Aggregator:
        llm_calls: int                          calls it makes per question (0 or 1)
        combine(items, answers, ctx) -> [Combined(choice, text, fell_back, usage)]

Built in, and what `routing.aggregator` names:
- `vote` (`Vote`): the weighted vote over the experts' choices, each weighing the times
  the router drew it; no LLM call.
- `weighted-vote` (`AccuracyVote`): the same, each vote also weighted by the expert's
  validation accuracy from profiling.
- an expert with role 'aggregator' (`Synthesis`): it gets the question and the experts'
  answers (reasoning inside `<think>` blocks stripped) in the Mixture-of-Agents synthesis
  prompt and answers once; when its answer names no option, the vote decides instead.
Plug-ins add theirs with `AGGREGATORS.add(name, obj)`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from orchestrator.answers import extract_answer
from orchestrator.errors import ConfigError
from orchestrator.prompts import instruction_for
from orchestrator.registry import Registry
from orchestrator.types import ExpertAnswer, Item, Usage
from workers.batch import GenerationRequest, GenerationResult, Message

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


class Combined(NamedTuple):
    """One question's combined answer."""

    choice: str | None
    text: str | None = None  # the aggregator LLM's reply, if one was asked
    fell_back: bool = False  # its reply named no option, so the vote decided
    usage: Usage = Usage()
    calls: int | None = None  # LLM calls it made (None: the aggregator's `llm_calls`)


Ask = Callable[[list[GenerationRequest]], list[GenerationResult]]


@dataclass
class AggregationContext:
    """What an aggregator may use: `ask` runs requests through the pool in one batch
    (grouped by model); `accuracy` is each expert's validation accuracy (%), empty
    before profiling."""

    ask: Ask
    accuracy: Mapping[str, float] = field(default_factory=dict)
    progress: bool = False


class Aggregator(Protocol):
    """Combines each item's expert answers. Built in: `Vote`, `AccuracyVote`,
    `Synthesis`."""

    #: LLM calls per question (traces count them)
    llm_calls: int

    def combine(
        self,
        items: Sequence[Item],
        answers: Sequence[Sequence[ExpertAnswer]],
        ctx: AggregationContext,
    ) -> list[Combined]: ...


class Vote:
    """Each answer's choice weighs the times its expert was drawn."""

    llm_calls = 0

    def weight(self, answer: ExpertAnswer, ctx: AggregationContext) -> float:
        return answer.weight

    def combine(
        self,
        items: Sequence[Item],
        answers: Sequence[Sequence[ExpertAnswer]],
        ctx: AggregationContext,
    ) -> list[Combined]:
        return [
            Combined(
                weighted_vote(
                    it.question,
                    [a.text for a in ans],
                    [self.weight(a, ctx) for a in ans],
                    it.answer_type,
                )
            )
            for it, ans in zip(items, answers, strict=True)
        ]


class AccuracyVote(Vote):
    """Each answer's choice weighs draws x the expert's validation accuracy (an expert
    with no record weighs as one right half the time)."""

    def weight(self, answer: ExpertAnswer, ctx: AggregationContext) -> float:
        return answer.weight * max(ctx.accuracy.get(answer.expert, 50.0), 1e-3)


class Synthesis:
    """An aggregator LLM synthesises the answers (Mixture-of-Agents); the vote decides
    when its reply names no option. With `when_split`, the LLM is asked only where the
    answers name more than one option: answers that agree are the final answer as they
    are (what `conclave` does with an aggregator that won on validation)."""

    llm_calls = 1

    def __init__(self, expert: str, when_split: bool = False) -> None:
        self.expert = expert
        self.when_split = when_split

    def combine(
        self,
        items: Sequence[Item],
        answers: Sequence[Sequence[ExpertAnswer]],
        ctx: AggregationContext,
    ) -> list[Combined]:
        votes = Vote().combine(items, answers, ctx)
        asked = [
            i
            for i, ans in enumerate(answers)
            if not self.when_split or len({a.choice for a in ans if a.choice is not None}) > 1
        ]
        reqs = [
            GenerationRequest(
                item_id=items[i].id,
                expert=self.expert,
                messages=synthesis_messages(
                    items[i].question, [a.text or "" for a in answers[i]], items[i].answer_type
                ),
            )
            for i in asked
        ]
        out = [Combined(v.choice, calls=0) for v in votes]
        for i, r in zip(asked, ctx.ask(reqs) if reqs else [], strict=True):
            it = items[i]
            choice = extract_answer(r.text, it.question, it.answer_type) if r.ok else None
            usage = Usage(r.prompt_tokens, r.completion_tokens)
            out[i] = Combined(choice or votes[i].choice, r.text, choice is None, usage, 1)
        return out


AGGREGATORS: Registry[Aggregator] = Registry("aggregator", "routing.aggregator")
AGGREGATORS.add("vote", Vote())
AGGREGATORS.add("weighted-vote", AccuracyVote())


def get_aggregator(name: str, llm_experts: Sequence[str]) -> Aggregator:
    """A registered aggregator, or Mixture-of-Agents synthesis by an aggregator expert."""
    if name in AGGREGATORS:
        return AGGREGATORS.get(name)
    if name in llm_experts:
        return Synthesis(name)
    raise ConfigError(
        f"aggregator {name!r} is neither registered ({', '.join(AGGREGATORS.names())}) nor "
        f"an expert with role 'aggregator' ({', '.join(llm_experts) or 'none in this pool'}); "
        "set routing.aggregator to one of them, or 'auto'"
    )
