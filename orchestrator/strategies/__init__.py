"""Answering strategies: how the facade plans which experts answer a question and how
their answers are combined. See `base.Strategy` for the contract and `STRATEGIES` for the
registry (`conclave eval --strategy NAME`, `Conclave.answer(items, NAME)`)."""

from orchestrator.strategies.base import STRATEGIES, Plan, Strategy, StrategyContext, get_strategy

__all__ = ["STRATEGIES", "Plan", "Strategy", "StrategyContext", "get_strategy"]
