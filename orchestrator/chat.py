"""Chat with the routed ensemble: questions in, one answer each, ready to send.

The gateway's model 'conclave' answers through `Conclave.chat`, which calls this: the
config's served strategy (`routing.strategy`, `conclave` by default) answers the
questions in one batch, and each trace becomes a `ChatAnswer` (the text, the choice, the
tokens, how it was answered), or the error that is that question's answer alone when no
expert answered it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from orchestrator.config import ConclaveConfig
from orchestrator.errors import NoAnswerError, RequestRejectedError
from orchestrator.protocol import ChatAnswer, CompletionUsage, EnsembleTrace
from orchestrator.types import ExpertAnswer, Item, Trace


class Answerer(Protocol):
    """What chat needs of the facade (`orchestrator.conclave.Conclave`)."""

    config: ConclaveConfig

    def answer(
        self,
        items: Sequence[Item],
        strategy: str = ...,
        *,
        on_done: Callable[[int, Trace], None] | None = ...,
    ) -> list[Trace]: ...


def chat_answers(
    conclave: Answerer,
    items: Sequence[Item],
    on_done: Callable[[int, ChatAnswer | Exception], None] | None = None,
) -> list[ChatAnswer | Exception]:
    """The routed ensemble's answer to each item, in order, in one batch: a `ChatAnswer`,
    or the exception that is that item's answer alone (`RequestRejectedError` or
    `NoAnswerError`); an error of the whole batch raises. `on_done(i, answer)` hears each
    item's answer as soon as it is final (`Conclave.answer`), before the batch ends."""
    hear = None if on_done is None else lambda i, tr: on_done(i, _answer(tr))
    strategy = conclave.config.routing.strategy
    return [_answer(tr) for tr in conclave.answer(items, strategy, on_done=hear)]


def _answer(tr: Trace) -> ChatAnswer | Exception:
    if tr.answers and all(a.error for a in tr.answers):  # nothing to vote on
        return _failed(tr.answers)
    why = tr.explanation
    text = tr.aggregator_text or next((a.text for a in tr.answers if a.text), "") or ""
    fallback = why is not None and why.stopped.startswith("out of scope")
    # one expert alone: its own words (what a stream sends as it generates them)
    lone = len(tr.answers) == 1 and tr.answers[0].choice == tr.choice and bool(text)
    if tr.choice and tr.aggregator_text is None and not fallback and not lone:
        # a vote has no text of its own: say the letter it chose
        text = f"The answer is ({tr.choice})."
    skills = tr.routing.skills if tr.routing else (why.skills if why is not None else [])
    trace = EnsembleTrace(
        keywords=tr.keywords,
        skills=skills,
        experts=[a.expert for a in tr.answers],
        aggregator=tr.aggregator,
        choice=tr.choice,
        calls=tr.calls,
        confidence=why.confidence if why is not None else None,
        out_of_scope=why.out_of_scope if why is not None else None,
        down=list(why.down) if why is not None else [],
    )
    prompt = tr.tokens - tr.completion_tokens  # every call of the ensemble counts
    usage = CompletionUsage.of(prompt, tr.completion_tokens)
    return ChatAnswer(id=tr.id, text=text, usage=usage, trace=trace)


def _failed(answers: list[ExpertAnswer]) -> Exception:
    """Every expert failed: refused when they all refused the question, else no answer."""
    why = "; ".join(a.error or "" for a in answers)  # each names its expert
    if all(a.error_type == RequestRejectedError.__name__ for a in answers):
        return RequestRejectedError(f"the experts refused the question: {why}")
    return NoAnswerError(f"every expert the router chose failed: {why}")
