"""Building a question's trace as the facade answers it: what planning found and cost,
each answer's vote weight, and the traces of probe questions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.probes import kind
from orchestrator.strategies import Plan
from orchestrator.types import ExpertAnswer, Item, Trace

if TYPE_CHECKING:
    from orchestrator.conclave import Conclave


def weigh(answers: list[ExpertAnswer], plan: Plan, conclave: Conclave) -> None:
    """Each answer's vote weight: the strategy's weight for its expert when it gives one,
    else the times the expert was drawn (split over its samples when it sampled)."""
    for a in answers:
        if plan.weights is not None and a.expert in plan.weights:
            a.weight = plan.weights[a.expert]
        elif conclave.samples(a.expert):
            a.weight = 1.0  # each draw answered for itself
        else:
            a.weight = float(plan.experts.count(a.expert))


def new_trace(item: Item, strategy: str, plan: Plan) -> Trace:
    """A question's trace before its experts answer: what planning found and cost."""
    return Trace(
        id=item.id,
        strategy=strategy,
        gold=item.gold_answer,
        keywords=plan.keywords,
        routing=plan.routing,
        calls=plan.calls,
        tokens=plan.usage.total,
        completion_tokens=plan.usage.completion,
    )


def probe_trace(item: Item, keywords: list[str], a: ExpertAnswer) -> Trace:
    """A drawn question's trace: strategy "probe" (the expert's own right answer) or
    "trial" (a trial question: judged as a task, against its profile's prediction)."""
    return Trace(
        id=item.id,
        strategy=kind(item.id),
        keywords=keywords,
        gold=item.gold_answer,
        answers=[a],
        choice=a.choice,
        correct=a.choice == item.gold_answer,
        calls=1,
        tokens=a.tokens,
        completion_tokens=a.completion_tokens,
    )
