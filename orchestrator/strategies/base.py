"""The strategy contract: plan -> ask -> combine.

    class Strategy:
        name, description               what `conclave eval` and reports show
        needs_profile, needs_expert     what it needs before it can run
        asks_every_expert, featured     what the harness may read from its traces
        plan(ctx, items)   -> a Plan per item: the experts to ask (a repeat is a weight)
        combiner(ctx)      -> the aggregator that combines their answers, or None to
                              take the one expert's answer as it is
        escalate(ctx, items, plans, answers) -> optional: after each batch, the
                              experts to ask next per item ([] when it is done: it is
                              not asked again); the facade asks them in one more batch
                              and asks again

The facade (`Conclave.answer`) runs every strategy the same way: plan all items, ask
every distinct (item, expert) pair in one pool batch (grouped by model), then combine
each item's answers with the strategy's aggregator in one more batch (with a vote, an
item is combined and final at the stage it is done, and the gateway answers its caller
then). A strategy never
calls the pool itself, so batching, answer reuse, probes and shadowing apply to all.

Built in: `conclave` (`routed.py`, the default) and, in `builtin.py`, `single`,
`best-single`, `random-k`, `majority`, `moa`, `symbolic-moe`. Register your own with
`STRATEGIES.add(name, obj)`; from YAML-driven runs, list its module under `plugins`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from orchestrator.registry import Registry
from orchestrator.types import Item, RouteExplanation, RoutingDecision, Usage

if TYPE_CHECKING:
    from agents.aggregators import Aggregator
    from orchestrator.conclave import Conclave


@dataclass
class Plan:
    """Which experts answer one item. An expert listed n times answers once and weighs n
    in the vote (the router may draw one twice). `routing` and `keywords` are what a
    routed strategy learnt on the way; `calls`/`usage` count the LLM calls planning made
    (the keyword model's), so traces show a strategy's whole cost."""

    experts: list[str]
    keywords: list[str] = field(default_factory=list)
    routing: RoutingDecision | None = None
    calls: int = 0
    usage: Usage = Usage()
    #: each expert's vote weight, when the strategy sets it (else: the times drawn)
    weights: dict[str, float] | None = None
    #: why the strategy asked whom it asked and stopped where it did (shown in traces)
    explanation: RouteExplanation | None = None


@dataclass
class StrategyContext:
    """What a strategy may read while planning: the facade, the experts serving in this
    batch (free agents waiting are not among them), and the caller's options."""

    conclave: Conclave
    experts: list[str]
    expert: str | None = None
    progress: bool = False


class Strategy(Protocol):
    """One way to answer. Implementations are small classes with these attributes."""

    #: the registry name (`conclave eval --strategy NAME`)
    name: ClassVar[str]
    #: one line for `--help`, reports and errors
    description: ClassVar[str]
    #: reads the routing state `profile` learns (best single expert, aggregator, profiles)
    needs_profile: ClassVar[bool]
    #: needs the caller to name one expert (`answer(..., expert=NAME)`); evals skip it
    needs_expert: ClassVar[bool]
    #: asks every serving expert every question, so each expert alone (and the
    #: per-category oracle) can be read from its traces at no extra cost
    asks_every_expert: ClassVar[bool]
    #: the product's own strategy: reports draw it apart from the baselines
    featured: ClassVar[bool]
    #: watched by the free-agent monitor (probes, shadow answers, rewards)
    monitored: ClassVar[bool]

    def plan(self, ctx: StrategyContext, items: Sequence[Item]) -> list[Plan]: ...

    def combiner(self, ctx: StrategyContext) -> str | Aggregator | None:
        """The aggregator's name ('vote', a registered aggregator, or an aggregator
        expert), an aggregator the strategy configured (`conclave`: an LLM asked only
        where the answers split), or None: the single planned expert's answer is
        final."""
        ...


STRATEGIES: Registry[Strategy] = Registry("strategy", "--strategy / Conclave.answer")


def get_strategy(name: str) -> Strategy:
    """The registered strategy called `name` (built-ins load on first use)."""
    import orchestrator.strategies.builtin  # noqa: F401  (registers the built-ins)

    return STRATEGIES.get(name)
