"""`conclave`: the product's routed strategy, designed from evidence rather than from
the paper's formula (`symbolic-moe` stays the paper's method, as a reference).

Per question:
1. Estimate each serving expert's accuracy on the question's skills, with the graded
   answers behind it (`skills.estimates`: per-keyword counts from profiling, shrunk
   towards the expert's overall accuracy), not +-1 sums times a global prior.
2. Ask the best expert alone when it is reliably best: when its estimate is at least
   what the weighted vote of the best three would be worth, given how often wrong answers
   agreed when profiling (they can gang up on a right one). Otherwise ask the best two.
3. Escalate in stages (one pool batch each): while the answers so far leave doubt (they
   disagree, or the one answer names no option or failed) and the next expert's vote
   could still change the outcome, ask the next best. The budget, `max_expert_calls`,
   is an average over the batch: easy questions cost one call, agreeing answers stop at
   two, and what they save goes to the most doubtful questions first (a sequential vote:
   ask until one answer leads by more than the next vote could overturn).
4. Combine with the vote weighted by each expert's log-odds of being right
   (`Estimate.weight`). No LLM aggregator: on the pools we measured, an aggregator that
   answers on its own overrode the routed experts (the issue's cause 3).

Every decision is in the trace's `explanation`: the estimates, the evidence, the budget,
the experts asked at each stage and why it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from orchestrator.answers import options_of
from orchestrator.errors import ConfigError
from orchestrator.strategies.base import STRATEGIES, Plan, StrategyContext
from orchestrator.types import ExpertAnswer, Item, RouteExplanation


def _options(item: Item) -> int:
    """How many answers a question admits, for the vote weights."""
    if item.answer_type == "integer":
        return 1000
    return max(len(options_of(item.question)), 2) if "(A)" in item.question else 10


class Conclave:
    """The `conclave` strategy (see the module docstring)."""

    name: ClassVar[str] = "conclave"
    description: ClassVar[str] = (
        "The product's router: per-skill accuracy estimates with their uncertainty, the "
        "best expert alone when it is reliably best, more only while answers disagree, a "
        "vote weighted by the estimates."
    )
    needs_profile: ClassVar[bool] = True
    needs_expert: ClassVar[bool] = False
    asks_every_expert: ClassVar[bool] = False
    featured: ClassVar[bool] = True
    monitored: ClassVar[bool] = True

    def plan(self, ctx: StrategyContext, items: Sequence[Item]) -> list[Plan]:
        from skills.estimates import estimate, vote_accuracy

        c = ctx.conclave
        if c.profiles is None:
            raise ConfigError("'conclave' routes by profiles: run `profile` first")
        routing = c.config.routing
        budget = routing.max_expert_calls
        # wrong answers that agree can outvote a right one: as often as they did when
        # profiling (two wrong answers agree about as often as both pick the distractor)
        collusion = (c.state.wrong_agreement if c.state is not None else 0.0) ** 0.5
        profiles = {e: c.profile_of(e) for e in ctx.experts}
        plans = []
        for it, (words, skills, calls, usage) in zip(
            items, c.skills_of(items, ctx.progress), strict=True
        ):
            ests = sorted(
                (estimate(e, profiles[e], skills, routing.prior_strength) for e in ctx.experts),
                key=lambda x: (-x.accuracy, -x.overall, x.expert),
            )
            k = _options(it)
            best = ests[0]
            team = ests[: min(budget, 3, len(ests))]
            alone = len(team) == 1 or best.accuracy >= vote_accuracy(team, k, collusion)
            first = [best.expert] if alone or budget == 1 else [e.expert for e in ests[:2]]
            plans.append(
                Plan(
                    list(first),
                    keywords=words,
                    calls=calls,
                    usage=usage,
                    weights={e.expert: round(e.weight(k), 4) for e in ests},
                    explanation=RouteExplanation(
                        estimates={e.expert: round(e.accuracy, 4) for e in ests},
                        evidence={e.expert: round(e.evidence, 1) for e in ests},
                        budget=budget,
                        stages=[list(first)],
                        stopped="",
                    ),
                )
            )
        return plans

    def escalate(
        self,
        ctx: StrategyContext,
        items: Sequence[Item],
        plans: list[Plan],
        answers: list[list[ExpertAnswer]],
    ) -> list[list[str]]:
        """The next expert for each item whose answers still leave doubt, most doubtful
        first, while the batch stays within `max_expert_calls` per question on average;
        [] for an item that is done."""
        budget = ctx.conclave.config.routing.max_expert_calls
        spent = sum(len(p.experts) for p in plans)
        allowance = budget * len(plans) - spent
        doubtful: list[tuple[float, int, str]] = []
        for i, (plan, ans) in enumerate(zip(plans, answers, strict=True)):
            why = plan.explanation
            assert why is not None and plan.weights is not None  # set by `plan`
            if why.stopped:
                continue
            weights = plan.weights
            left = [e for e in why.estimates if e not in plan.experts]  # best first
            tally: dict[str, float] = {}
            for a in ans:
                if a.choice is not None:
                    tally[a.choice] = tally.get(a.choice, 0.0) + weights[a.expert]
            lead, second = (sorted(tally.values(), reverse=True) + [0.0, 0.0])[:2]
            if not left:
                why.stopped = "every serving expert answered"
            elif len(ans) == 1 and tally and len(why.stages[0]) == 1:
                why.stopped = "the best expert answered; it is reliably best"
            elif tally and lead - second > weights[left[0]]:
                agree = len(tally) == 1 and len(ans) > 1
                why.stopped = (
                    f"{len(ans)} answers agree"
                    if agree
                    else "the next expert's vote could not change the outcome"
                )
            else:  # doubt: how far the next vote is from settling it (more: ask first)
                doubtful.append((weights[left[0]] - (lead - second), i, left[0]))
        out: list[list[str]] = [[] for _ in plans]
        for _, i, nxt in sorted(doubtful, key=lambda d: (-d[0], d[1])):
            why = plans[i].explanation
            assert why is not None
            if allowance <= 0:
                why.stopped = "the batch's budget is spent"
                continue
            allowance -= 1
            why.stages.append([nxt])
            out[i] = [nxt]
        return out

    def combiner(self, ctx: StrategyContext) -> str | None:
        return "vote"


STRATEGIES.add(Conclave.name, Conclave())
