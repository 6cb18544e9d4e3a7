"""What an eval run is asked to do (`EvalSpec`), and which strategies it may run."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from evals.datasets import SKILLMIX_LIMIT
from orchestrator.errors import ConfigError
from orchestrator.strategies import STRATEGIES, Strategy, get_strategy

DEFAULT_STRATEGIES = ("conclave", "best-single", "random-k", "majority", "moa", "symbolic-moe")


class EvalSpec(BaseModel):
    """What an eval run is asked to do; a run directory resumes only the same spec."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("skillmix", description="'skillmix' or a local dataset file.")
    split: str = Field("test", description="Split answered (skillmix).")
    profile_dataset: str | None = Field(
        None, description="Validation file profiles are built from; default: the dataset's."
    )
    profile_split: str = Field("validation", description="Split profiled (skillmix).")
    limit: int | None = Field(
        None,
        ge=1,
        description=f"Questions per category (skillmix; default {SKILLMIX_LIMIT}) or rows "
        "of a file (default: all).",
    )
    profile_limit: int | None = Field(None, ge=1, description="Same, for the validation set.")
    categories: list[str] = Field(default_factory=list, description="Only these categories.")
    strategies: list[str] = Field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    seed: int = Field(0, description="Seed of the data and of the router.")


def check_strategies(strategies: Sequence[str]) -> list[Strategy]:
    """The registered strategies called `strategies`, in order. A name that is not
    registered, or a strategy that needs the caller to name its expert (an eval asks the
    same question of every strategy, so it has none to name), is a `ConfigError` listing
    the strategies an eval can run."""
    found: list[Strategy] = []
    bad: list[str] = []
    for name in strategies:
        try:
            strategy = get_strategy(name)
        except ConfigError:
            if name in STRATEGIES:  # registered but broken: its own error says why
                raise
            bad.append(name)
            continue
        if strategy.needs_expert:
            bad.append(name)
        else:
            found.append(strategy)
    if bad:
        allowed = ", ".join(_runnable())
        raise ConfigError(f"unknown strategies {bad}; choose from {allowed}")
    return found


def _runnable() -> list[str]:
    """Registered strategies an eval can run (those that need no expert named)."""
    return [name for name in STRATEGIES.names() if not get_strategy(name).needs_expert]
