"""Extension points by name: the registry itself, and a toy router, aggregator, strategy
and swap rule registered from outside the built-ins and used through the facade."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

import pytest

from agents.aggregators import AGGREGATORS, AggregationContext, Combined
from agents.free_agents import AuditLog, FreeAgentMonitor
from agents.swap_rules import SWAP_RULES, Decision
from orchestrator.config import FreeAgentSettings, parse_config
from orchestrator.errors import ConfigError
from orchestrator.registry import Registry
from orchestrator.strategies import STRATEGIES, Plan, StrategyContext, get_strategy
from orchestrator.types import ExpertAnswer, Item, RoutingDecision, Trace
from skills.router import ROUTERS
from tests.unit.test_conclave import items, make


def test_the_registry_is_lazy_refuses_duplicates_and_lists_what_exists():
    reg: Registry[object] = Registry("widget", "widgets.type")
    reg.add("path", "pathlib:Path")  # not imported until asked for
    reg.add("three", 3)
    with pytest.raises(ConfigError, match="already registered"):
        reg.add("three", 4)
    reg.add("three", 4, replace=True)
    assert reg.get("three") == 4
    from pathlib import Path

    assert reg.get("path") is Path
    with pytest.raises(
        ConfigError, match=r"unknown widget 'nope' in widgets.type; registered: path, three"
    ):
        reg.get("nope")
    reg.add("broken", "no_such_module_xyz:thing")
    with pytest.raises(ConfigError, match="cannot be imported"):
        reg.get("broken")
    with pytest.raises(ConfigError, match="module:attribute"):
        reg.add("bad", "no-colon")
    assert reg.ordered() == ["path", "three", "broken"]


def test_unknown_extensions_fail_when_the_facade_is_built():
    base = {"pool": {"experts": [{"name": "a", "backend": {"type": "fake"}}]}}
    from orchestrator.extensions import check_extensions

    for section, value, registered in [
        ({"router": {"type": "psychic"}}, "psychic", "symbolic-moe"),
        ({"strategy": "telepathy"}, "telepathy", "symbolic-moe"),
        ({"aggregator": "oracle"}, "oracle", "vote, weighted-vote"),
    ]:
        cfg = parse_config({**base, "routing": section})
        with pytest.raises(ConfigError, match=f"{value}.*{registered}"):
            check_extensions(cfg)
    cfg = parse_config({**base, "free_agents": {"enabled": True, "swap_rule": "coin"}})
    with pytest.raises(ConfigError, match="unknown swap rule 'coin'.*window-mean"):
        check_extensions(cfg)


class LastExpert:
    """A toy router: always the alphabetically last expert, k times."""

    def __init__(self, profiles, settings) -> None:  # noqa: ANN001 - the registry's call
        self.experts = sorted(profiles)
        self.k = settings.k

    def select(self, item_id, skills, keywords=None) -> RoutingDecision:  # noqa: ANN001
        return RoutingDecision(
            item_id=item_id,
            keywords=list(keywords or []),
            rule="random",
            chosen=[self.experts[-1]] * self.k,
        )


class Contrarian:
    """A toy aggregator: the choice of the answer with the least weight."""

    llm_calls = 0

    def combine(
        self,
        items: Sequence[Item],
        answers: Sequence[Sequence[ExpertAnswer]],
        ctx: AggregationContext,
    ) -> list[Combined]:
        return [Combined(min(ans, key=lambda a: (a.weight, a.expert)).choice) for ans in answers]


class EveryOther:
    """A toy strategy: the serving experts in turn, one per question."""

    name: ClassVar[str] = "every-other"
    description: ClassVar[str] = "Experts in turn."
    needs_profile: ClassVar[bool] = False
    needs_expert: ClassVar[bool] = False
    asks_every_expert: ClassVar[bool] = False
    featured: ClassVar[bool] = False
    monitored: ClassVar[bool] = False

    def plan(self, ctx: StrategyContext, items: Sequence[Item]) -> list[Plan]:
        return [Plan([ctx.experts[i % len(ctx.experts)]]) for i in range(len(items))]

    def combiner(self, ctx: StrategyContext) -> str | None:
        return None


@pytest.fixture
def registered():
    ROUTERS.add("last-expert", LastExpert)
    AGGREGATORS.add("contrarian", Contrarian())
    get_strategy("single")  # built-ins first, so the toy one is not mistaken for them
    STRATEGIES.add("every-other", EveryOther())
    yield
    ROUTERS.remove("last-expert")
    AGGREGATORS.remove("contrarian")
    STRATEGIES.remove("every-other")


def test_a_registered_router_and_aggregator_are_named_in_the_config(registered):
    with make(aggregator="contrarian") as c:
        c.config = c.config.model_copy(
            update={
                "routing": c.config.routing.model_copy(
                    update={
                        "router": c.config.routing.router.model_copy(update={"type": "last-expert"})
                    }
                )
            }
        )
        c.profile(items("validation"), dataset="skillmix")
        assert c.state is not None and c.state.aggregator == "contrarian"
        traces = c.answer(items("test")[:4], "symbolic-moe")
        # the toy router sends every question to 'num', the last expert by name
        assert all(t.routing is not None and t.routing.chosen == ["num"] * 3 for t in traces)
        assert all([a.expert for a in t.answers] == ["num"] for t in traces)
        assert all(t.aggregator == "contrarian" and t.choice == t.answers[0].choice for t in traces)


def test_a_registered_strategy_runs_through_the_facade(registered):
    with make() as c:
        traces = c.answer(items("test")[:6], "every-other")
        assert [t.answers[0].expert for t in traces] == (c.experts * 2)[:6]
        assert all(t.strategy == "every-other" and t.calls == 1 for t in traces)


def test_a_registered_swap_rule_decides_for_the_monitor(tmp_path):
    class Impatient:
        """Releases after three rewards under 1; never promotes."""

        def release(self, window, settings):  # noqa: ANN001
            bad = [r for r in window if r < 1]
            return (
                Decision("release", "three misses", {"misses": len(bad)}) if len(bad) >= 3 else None
            )

        def verdict(self, pairs, incumbent, settings):  # noqa: ANN001
            return Decision("rejection", "never", {}) if len(pairs) >= 2 else None

    SWAP_RULES.add("impatient", Impatient())
    try:
        settings = FreeAgentSettings(free_agents=["free"], swap_rule="impatient")
        mon = FreeAgentMonitor(settings, ["inc", "free"], AuditLog(tmp_path / "a.jsonl"))
        rng = random.Random(0)
        for i in range(8):
            answer = ExpertAnswer(expert="inc", choice="B")
            shadow = ExpertAnswer(expert="free", choice="A" if rng.random() < 0.5 else "B")
            tr = Trace(id=f"q{i}", strategy="symbolic-moe", answers=[answer], gold="A", choice="B")
            mon.observe([tr], {tr.id: [("inc", shadow)]})
        events = [(e.event, e.reason) for e in mon.log.read()]
        assert events[:3] == [
            ("release", "three misses"),
            (
                "probation_start",
                "shadows inc on every task it takes and every trial question it is asked",
            ),
            ("rejection", "never"),
        ]
    finally:
        SWAP_RULES.remove("impatient")
