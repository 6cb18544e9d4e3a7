"""Swap rules: when the free-agent monitor releases a serving agent, and how a probation
ends.

    class SwapRule:
        release(window, settings)  -> Decision | None   release this serving agent?
        verdict(pairs, settings)   -> Decision | None   promote or reject a challenger?

The monitor (`agents.free_agents.FreeAgentMonitor`) owns the state (windows of rewards,
probations, the audit log) and applies a decision; a rule only judges the evidence it is
given, so a new rule is one small class. Built in, and what `free_agents.swap_rule`
names: `window-mean` (`WindowMean`). Plug-ins add theirs with `SWAP_RULES.add`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from orchestrator.config import FreeAgentSettings
from orchestrator.registry import Registry


@dataclass
class Decision:
    """What a rule decided and why, with the figures the audit log keeps."""

    event: Literal["release", "promotion", "rejection"]
    reason: str
    figures: dict[str, float] = field(default_factory=dict)


class SwapRule(Protocol):
    def release(self, window: Sequence[float], settings: FreeAgentSettings) -> Decision | None:
        """A serving agent's recent rewards (oldest first) -> a release, or None."""
        ...

    def verdict(
        self, pairs: Sequence[tuple[float, float]], incumbent: str, settings: FreeAgentSettings
    ) -> Decision | None:
        """(incumbent's reward, challenger's reward) on the tasks both answered -> a
        promotion, a rejection, or None (the probation goes on)."""
        ...


def _bounds(xs: Sequence[float], z: float) -> tuple[float, float, float]:
    """(mean, lower, upper) one-sided bounds at z standard errors."""
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.inf
    return m, m - z * se, m + z * se


class WindowMean:
    """Release: a full window (`min_samples`) whose mean reward is under `release_below`.
    Verdict, after `probation_min` paired tasks: promote when the one-sided lower bound
    of the paired difference exceeds `promote_margin` or the challenger's own lower bound
    clears `release_below`; reject when the difference's upper bound falls below the
    margin or `probation_max` tasks pass."""

    def release(self, window: Sequence[float], settings: FreeAgentSettings) -> Decision | None:
        if len(window) < settings.min_samples:
            return None
        mean = statistics.fmean(window)
        if mean >= settings.release_below:
            return None
        return Decision(
            "release",
            f"mean reward {mean:.3f} over its last {len(window)} tasks is below "
            f"{settings.release_below}",
            {"mean_reward": mean, "samples": len(window)},
        )

    def verdict(
        self, pairs: Sequence[tuple[float, float]], incumbent: str, settings: FreeAgentSettings
    ) -> Decision | None:
        s, n = settings, len(pairs)
        if n < s.probation_min:
            return None
        d, d_lo, d_hi = _bounds([c - i for i, c in pairs], s.confidence_z)
        c_mean, c_lo, _ = _bounds([c for _, c in pairs], s.confidence_z)
        figures = {
            "tasks": n,
            "diff": d,
            "diff_lower": d_lo,
            "diff_upper": d_hi,
            "challenger_mean": c_mean,
            "challenger_lower": c_lo,
        }
        if d_lo > s.promote_margin or c_lo >= s.release_below:
            why = (
                f"beats {incumbent} by {d:.3f} (lower bound {d_lo:.3f} > {s.promote_margin})"
                if d_lo > s.promote_margin
                else f"its mean reward's lower bound {c_lo:.3f} clears {s.release_below}"
            )
            return Decision("promotion", f"after {n} shadow tasks it {why}", figures)
        if d_hi < s.promote_margin or n >= s.probation_max:
            why = (
                f"it trails {incumbent} (upper bound {d_hi:.3f} < {s.promote_margin})"
                if d_hi < s.promote_margin
                else f"no verdict after {n} tasks (probation_max)"
            )
            return Decision("rejection", why, figures)
        return None


SWAP_RULES: Registry[SwapRule] = Registry("swap rule", "free_agents.swap_rule")
SWAP_RULES.add("window-mean", WindowMean())
