"""Learning after profiling: graded answers update what the routed strategies estimate.

Profiling grades every expert on the validation set once. After that, an answer is
graded when a user sends feedback on it (`POST /v1/feedback`, `Conclave.feedback`) or
when a caller hands `Conclave.learn` traces whose questions have a gold answer. Each
graded answer is a new observation of its expert on that question: it adds to the
expert's per-keyword counts (a provenance entry per batch, split "feedback" or
"graded") and to the question index as a new neighbour, and the profile folder is
written again, so a restarted gateway keeps what it learnt.

Evaluations do not learn from their test split's gold answers: a run would then be
graded on what it had been told.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.types import ExpertAnswer, Item, Trace

if TYPE_CHECKING:
    from orchestrator.conclave import Conclave

#: answers kept for feedback (the free-agent monitor keeps as many)
RECENT = 10_000


@dataclass(frozen=True)
class Answered:
    """One answered question, kept until feedback may grade it."""

    item: Item
    keywords: list[str]
    answers: list[ExpertAnswer]
    final: str | None


class RecentAnswers:
    """The last `RECENT` answered questions by id, for feedback; thread-safe."""

    def __init__(self, size: int = RECENT) -> None:
        self.size = size
        self._items: OrderedDict[str, Answered] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, items: Sequence[Item], traces: Sequence[Trace]) -> None:
        with self._lock:
            for it, tr in zip(items, traces, strict=True):
                self._items[tr.id] = Answered(it, list(tr.keywords), list(tr.answers), tr.choice)
                self._items.move_to_end(tr.id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, qid: str) -> Answered:
        """The answered question `qid`; KeyError when it is unknown or too old."""
        with self._lock:
            return self._items[qid]


def grade(answered: Answered, correct: bool, gold: str | None = None) -> dict[str, bool]:
    """Each expert's answer graded by a user's verdict on the final answer: against the
    right answer when the user gave it; else an answer that agreed with the final one is
    right exactly when the final one is, one that disagreed with a right final answer is
    wrong, and one that disagreed with a wrong final answer is not graded (it may or may
    not be right). Failed and unparsable answers are not graded: they say nothing about
    the expert's knowledge (the monitor's reward counts them)."""
    out: dict[str, bool] = {}
    for a in answered.answers:
        if a.error is not None or a.choice is None:
            continue
        if gold is not None:
            out[a.expert] = out.get(a.expert, True) and a.choice == gold
        elif a.choice == answered.final:
            out[a.expert] = out.get(a.expert, True) and correct
        elif correct:
            out[a.expert] = False
    return out


def learn_from(
    conclave: Conclave,
    graded: Sequence[tuple[Item, list[str], dict[str, bool]]],
    split: str,
) -> int:
    """Add graded answers, (question, its keywords, expert -> right) each, to the
    profiles and the question index, and save the routing state where it was loaded
    from. Returns how many answers it learnt from."""
    graded = [g for g in graded if g[2]]
    if not graded or conclave.profiles is None:
        return 0
    inv = conclave.inventory
    skills = [inv.map(words) if inv is not None else list(words) for _, words, _ in graded]
    rows = [
        (expert, sk, ok)
        for (_, _, outcomes), sk in zip(graded, skills, strict=True)
        for expert, ok in outcomes.items()
    ]
    dataset = conclave.state.dataset if conclave.state is not None else "feedback"
    conclave.profiles.update(rows, dataset=dataset, split=split)
    if conclave.questions is not None:
        vectors = conclave.embedder().encode([it.question for it, _, _ in graded])
        for (it, _, outcomes), sk, v in zip(graded, skills, vectors, strict=True):
            conclave.questions.add(it.id, v, outcomes, sk)
    if conclave.state_dir is not None:
        conclave.save_state(conclave.state_dir)
    return len(rows)


def feedback(conclave: Conclave, task: str, correct: bool, gold: str | None = None) -> int:
    """A user graded the final answer to question `task` (and may have given the right
    answer, `gold`): the experts' graded answers update the estimates the routed
    strategies read, saved with the profile, and the free-agent monitor's rewards.
    Returns how many answers were graded; KeyError for a question not among the last
    answered ones."""
    answered = conclave.recent.get(task)
    outcomes = grade(answered, correct, gold)
    with conclave.learning:
        learnt = learn_from(conclave, [(answered.item, answered.keywords, outcomes)], "feedback")
    scored = 0
    if conclave.monitor is not None:
        with contextlib.suppress(KeyError):  # answered by a strategy it does not watch
            scored = conclave.monitor.feedback(task, correct, gold)
    return max(learnt, scored)


def learn(conclave: Conclave, items: Sequence[Item], traces: Sequence[Trace]) -> int:
    """Learn from answered questions that have a gold answer: each expert's answer is
    graded against it. Returns how many answers it learnt from."""
    graded = [
        (it, list(tr.keywords), grade(Answered(it, [], tr.answers, None), True, it.gold_answer))
        for it, tr in zip(items, traces, strict=True)
        if it.gold_answer is not None
    ]
    with conclave.learning:
        return learn_from(conclave, graded, "graded")
