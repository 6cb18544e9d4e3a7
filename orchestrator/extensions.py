"""Checking a config's named extensions against their registries, before any model loads."""

from __future__ import annotations

from orchestrator.config import ConclaveConfig, Role
from orchestrator.strategies import get_strategy


def check_extensions(config: ConclaveConfig) -> None:
    """Fail now, not at the first question, on an extension the config names that is not
    registered: the router, the aggregator, the served strategy, the swap rule. (The
    backends are checked when the config is parsed.)"""
    from agents.aggregators import get_aggregator
    from agents.swap_rules import SWAP_RULES
    from skills.router import ROUTERS

    ROUTERS.get(config.routing.router.type)
    get_strategy(config.routing.strategy)
    if config.routing.aggregator != "auto":
        get_aggregator(config.routing.aggregator, config.pool.with_role(Role.AGGREGATOR))
    if config.free_agents.active:
        SWAP_RULES.get(config.free_agents.swap_rule)
