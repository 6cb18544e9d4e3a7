"""`conclave`: the product's routed strategy, designed from evidence rather than from
the paper's formula (`symbolic-moe` stays the paper's method, as a reference).

Per question:
1. Estimate each serving expert's accuracy on the question, with the graded answers
   behind it (`skills.estimates`: per-keyword counts from profiling, shrunk towards the
   expert's overall accuracy, blended with its record on the question's nearest
   validation questions as far as profiling found that witness better), not +-1 sums
   times a global prior.
2. Ask the best expert alone when it is reliably best: when its estimate is at least
   what the weighted vote of the best three would be worth, given how often wrong answers
   agreed when profiling (they can gang up on a right one). Otherwise ask the best two.
3. Escalate in stages (one pool batch each): ask the next best expert where that raises
   the chance of a right final answer by at least `MIN_GAIN` per call, looking one and
   two answers ahead (`skills.sequential`: the posterior of each answer under the
   estimates, with the options in play narrowed by how often wrong answers agreed when
   profiling). The budget, `max_expert_calls`, is an average over the batch: easy
   questions cost one call, agreeing answers stop at two, and what they save goes to
   the questions where one more answer is worth most.
4. Combine with the vote weighted by each expert's log-odds of being right
   (`Estimate.weight`). An LLM aggregator only where it won end to end when profiling
   (`orchestrator.profiling.choose_synthesis`: chosen on one half of the validation
   questions where the experts split, confirmed on the other), and only for questions
   whose answers split: on the pools we measured, an aggregator that answers on its own
   overrode the routed experts (the issue's cause 3).

Every decision is in the trace's `explanation`: the estimates, the evidence, the budget,
the experts asked at each stage and why it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from orchestrator.errors import ConfigError
from orchestrator.strategies.base import STRATEGIES, Plan, StrategyContext
from orchestrator.types import ExpertAnswer, Item, RouteExplanation

if TYPE_CHECKING:
    from agents.aggregators import Aggregator

#: ask one more expert only if it raises the chance of a right answer by this much per call
MIN_GAIN = 0.02


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
        from skills.sequential import effective_options, options_in

        c = ctx.conclave
        if c.profiles is None:
            raise ConfigError("'conclave' routes by profiles: run `profile` first")
        routing = c.config.routing
        budget = routing.max_expert_calls
        # wrong answers that agree can outvote a right one: as often as they did when
        # profiling (two wrong answers agree about as often as both pick the distractor)
        agreement = c.state.wrong_agreement if c.state is not None else 0.0
        collusion = agreement**0.5
        blend = c.state.neighbour_weight if c.state is not None else 0.0
        profiles = {e: c.profile_of(e) for e in ctx.experts}
        source = c.skills_source()
        # an expert whose engine is restarting is skipped (failover), unless the config
        # says to wait for it or to fail with it
        down = c.pool.unavailable() if routing.on_expert_down == "failover" else set()
        plans = []
        for it, (words, skills, calls, usage), near, (nearest, outside) in zip(
            items,
            c.skills_of(items, ctx.progress, source),
            c.reader.neighbours_of(items),
            c.reader.scope_of(items),
            strict=True,
        ):
            ranked = sorted(
                (
                    estimate(
                        e,
                        profiles[e],
                        skills,
                        c.prior_of(e),
                        near.get(e),
                        blend,
                    )
                    for e in ctx.experts
                ),
                key=lambda x: (-x.accuracy, -x.overall, x.expert),
            )
            ests = [e for e in ranked if e.expert not in down] or ranked
            k = effective_options(options_in(it), agreement)
            best = ests[0]
            team = ests[: min(budget, 3, len(ests))]
            # a vote worth no more than the best alone (to rounding) is not worth its calls
            worth = vote_accuracy(team, k, collusion)
            alone = len(team) == 1 or best.accuracy >= worth - 1e-9
            first = [best.expert] if alone or budget == 1 else [e.expert for e in ests[:2]]
            # passed over as down: ranked above the last one asked first (the best, or
            # the second of a pair), so the trace says whom it would have asked (`first`
            # holds a down expert only when every expert is down: asked anyway, not skipped)
            last = next(i for i, e in enumerate(ranked) if e.expert == first[-1])
            skipped = [
                e.expert for e in ranked[:last] if e.expert in down and e.expert not in first
            ]
            weights = {e.expert: round(e.weight(k), 4) for e in ranked}
            stopped = ""
            if outside is not None and routing.fallback is not None:
                # the profile says nothing about this question: a specialist's confident
                # junk is worse than a generalist's honest answer
                first, stopped = [routing.fallback], f"out of scope: {outside}"
                weights.setdefault(routing.fallback, 1.0)
            plans.append(
                Plan(
                    list(first),
                    keywords=words,
                    calls=calls,
                    usage=usage,
                    weights=weights,
                    explanation=RouteExplanation(
                        skills=list(dict.fromkeys(skills)),
                        skills_from=source,
                        blend=blend if near else 0.0,
                        estimates={e.expert: round(e.accuracy, 4) for e in ranked},
                        evidence={e.expert: round(e.evidence, 1) for e in ranked},
                        down=skipped,
                        budget=budget,
                        stages=[list(first)],
                        stopped=stopped,
                        options=round(k, 2),
                        out_of_scope=outside,
                        nearest=round(nearest, 4) if nearest is not None else None,
                        confidence=0.0 if stopped else None,
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
        """The next expert for each item where asking more is worth it, the items where
        it is worth most first, while the batch stays within `max_expert_calls` per
        question on average; [] for an item that is done."""
        from orchestrator.errors import ExpertUnavailableError
        from skills.sequential import posterior

        routing = ctx.conclave.config.routing
        budget = routing.max_expert_calls
        spent = sum(len(p.experts) for p in plans)
        allowance = budget * len(plans) - spent
        # down now (it may have died since the plan): not asked, as at planning
        c = ctx.conclave
        down_now = c.pool.unavailable() if routing.on_expert_down == "failover" else set()
        worth: list[tuple[float, int, str]] = []
        for i, (plan, ans) in enumerate(zip(plans, answers, strict=True)):
            why = plan.explanation
            assert why is not None and plan.weights is not None  # set by `plan`
            if why.stopped:
                continue
            gone = [a.expert for a in ans if a.error_type == ExpertUnavailableError.__name__]
            why.down.extend(e for e in gone if e not in why.down)
            if gone and routing.on_expert_down == "fail" and all(a.error for a in ans):
                why.stopped = f"{', '.join(gone)} down (routing.on_expert_down: fail)"
                continue
            tally: dict[str, float] = {}
            for a in ans:
                if a.choice is not None:
                    tally[a.choice] = tally.get(a.choice, 0.0) + plan.weights[a.expert]
            named, _, _ = posterior(tally, why.options)
            why.confidence = round(max(named), 4) if named else 0.0
            # best first; an expert that was down is not asked again for this question
            unasked = [e for e in why.estimates if e not in plan.experts and e not in why.down]
            left = [e for e in unasked if e not in down_now]
            if not left:
                skipped = [e for e in unasked if e in down_now]
                why.down.extend(skipped)  # the trace says who it would have asked
                why.stopped = (
                    f"the experts left are down ({', '.join(skipped)})"
                    if skipped
                    else "every serving expert answered"
                )
                continue
            if len(ans) == 1 and tally and len(why.stages[0]) == 1:
                why.stopped = "the best expert answered; it is reliably best"
                continue
            if not tally:  # no answer yet (its experts failed or were down): one is owed
                worth.append((math.inf, i, left[0]))
                continue
            value = _worth(tally, why, left)
            # the best left were down: worth asking, but passed over (the trace says so)
            passed = [e for e in unasked[:2] if e in down_now]
            if value < MIN_GAIN and passed and _worth(tally, why, unasked) >= MIN_GAIN:
                why.down.extend(passed)
                why.stopped = f"the experts worth asking next are down ({', '.join(passed)})"
            elif value < MIN_GAIN:
                agree = len(tally) == 1 and len(ans) > 1
                why.stopped = (
                    f"{len(ans)} answers agree"
                    if agree
                    else f"more answers would add under {MIN_GAIN:.0%} to the chance of a "
                    "right answer"
                )
            else:
                worth.append((value, i, left[0]))
        out: list[list[str]] = [[] for _ in plans]
        for value, i, nxt in sorted(worth, key=lambda w: (-w[0], w[1])):
            why = plans[i].explanation
            assert why is not None
            if allowance <= 0 and value != math.inf:  # an answer owed is asked regardless
                why.stopped = "the batch's budget is spent"
                continue
            allowance -= 1
            why.stages.append([nxt])
            # the experts ranked above the one asked, passed over as down: failed over
            ahead = list(why.estimates)[: list(why.estimates).index(nxt)]
            why.down.extend(
                e
                for e in ahead
                if e in down_now and e not in plans[i].experts and e not in why.down
            )
            out[i] = [nxt]
        return out

    def combiner(self, ctx: StrategyContext) -> str | Aggregator | None:
        """The weighted vote, or the aggregator LLM profiling found to beat it end to end
        (`RoutingState.synthesis`), asked only where the answers split."""
        from agents.aggregators import Synthesis

        st = ctx.conclave.state
        if st is None or st.synthesis is None:
            return "vote"
        return Synthesis(st.synthesis, when_split=True)


STRATEGIES.add(Conclave.name, Conclave())


def _worth(tally: dict[str, float], why: RouteExplanation, names: list[str]) -> float:
    """What asking the first of `names` (or the first two, per call) adds to the chance of
    a right answer: one answer can be worth nothing alone (it can only tie two that
    disagree), so a pair's gain counts too."""
    from skills.sequential import gain

    asks = [why.estimates[e] for e in names[:2]]
    return max(gain(tally, why.options, asks[:1]), gain(tally, why.options, asks) / 2)
