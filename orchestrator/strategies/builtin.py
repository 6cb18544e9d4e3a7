"""The built-in strategies: the paper's baselines and Symbolic-MoE.

| name | asks | combines with |
|---|---|---|
| `single` | the expert the caller names | its own answer |
| `best-single` | the expert with the best validation accuracy | its own answer |
| `random-k` | k experts drawn uniformly (seeded per question) | the vote |
| `majority` | every serving expert | the vote |
| `moa` | every serving expert | an aggregator LLM (Mixture-of-Agents) |
| `symbolic-moe` | k experts recruited by skills | the aggregator profiling chose |
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from orchestrator.errors import ConfigError
from orchestrator.strategies.base import STRATEGIES, Plan, StrategyContext
from orchestrator.types import Item


class _Baseline:
    description: ClassVar[str] = ""
    needs_profile: ClassVar[bool] = False
    needs_expert: ClassVar[bool] = False
    asks_every_expert: ClassVar[bool] = False
    featured: ClassVar[bool] = False
    monitored: ClassVar[bool] = False

    def combiner(self, ctx: StrategyContext) -> str | None:
        return "vote"


class Single(_Baseline):
    name: ClassVar[str] = "single"
    description = "One expert the caller names answers alone."
    needs_expert = True

    def plan(self, ctx: StrategyContext, items: Sequence[Item]) -> list[Plan]:
        if ctx.expert not in ctx.experts:
            raise ConfigError(f"strategy 'single' needs an expert: one of {ctx.experts}")
        return [Plan([ctx.expert]) for _ in items]

    def combiner(self, ctx: StrategyContext) -> str | None:
        return None


class BestSingle(_Baseline):
    name: ClassVar[str] = "best-single"
    description = "The expert with the best validation accuracy answers alone."
    needs_profile = True

    def plan(self, ctx: StrategyContext, items: Sequence[Item]) -> list[Plan]:
        state = ctx.conclave.state
        if state is None:
            raise ConfigError("'best-single' is chosen on validation: run `profile` first")
        return [Plan([state.best_single]) for _ in items]

    def combiner(self, ctx: StrategyContext) -> str | None:
        return None


class RandomK(_Baseline):
    name: ClassVar[str] = "random-k"
    description = "k experts drawn at random (seeded per question), then the vote."

    def plan(self, ctx: StrategyContext, items: Sequence[Item]) -> list[Plan]:
        settings = ctx.conclave.config.routing.router
        # seeded per item: the same experts whatever batch the question comes in
        return [
            Plan(random.Random(f"{settings.seed}|{it.id}").choices(ctx.experts, k=settings.k))
            for it in items
        ]


class Majority(_Baseline):
    name: ClassVar[str] = "majority"
    description = "Every expert answers; the vote decides."
    asks_every_expert = True

    def plan(self, ctx: StrategyContext, items: Sequence[Item]) -> list[Plan]:
        return [Plan(list(ctx.experts)) for _ in items]


class MixtureOfAgents(Majority):
    name: ClassVar[str] = "moa"
    description = "Every expert answers; an aggregator LLM synthesises (Mixture-of-Agents)."
    needs_profile = True  # the aggregator LLM is the one profiling scored best

    def combiner(self, ctx: StrategyContext) -> str | None:
        return ctx.conclave.llm_aggregator()


class SymbolicMoE(_Baseline):
    name: ClassVar[str] = "symbolic-moe"
    description = (
        "Symbolic-MoE: keywords -> skills -> k experts recruited by their profiles; the "
        "aggregator profiling chose combines."
    )
    needs_profile = True
    monitored = True

    def plan(self, ctx: StrategyContext, items: Sequence[Item]) -> list[Plan]:
        return [
            Plan(
                decision.chosen,
                keywords=decision.keywords,
                routing=decision,
                calls=calls,
                usage=usage,
            )
            for decision, calls, usage in ctx.conclave.routed(items, ctx.progress, ctx.experts)
        ]

    def combiner(self, ctx: StrategyContext) -> str | None:
        state = ctx.conclave.state
        return state.aggregator if state is not None else "vote"


for _strategy in (Single, BestSingle, RandomK, Majority, MixtureOfAgents, SymbolicMoE):
    STRATEGIES.add(_strategy.name, _strategy())

# the product's own strategy, listed first by `conclave eval`
import orchestrator.strategies.routed  # noqa: E402, F401
