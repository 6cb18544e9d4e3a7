"""Swap rules: when the free-agent monitor releases a serving agent, and how a probation
ends.

    class SwapRule:
        release(window, settings)  -> Decision | None   release this serving agent?
        verdict(pairs, settings)   -> Decision | None   promote or reject a challenger?

A rule may judge releases on graded answers instead of rewards:

        release_graded(graded, settings) -> Decision | None
            graded: (right?, the accuracy predicted for that question, a probe?), oldest
            first, since the agent's evidence was last reset

(or, giving the statistic it judged by too, judge_graded(graded, settings) ->
(statistic, Decision | None)), and may score probation pairs with weights of its own
(the monitor's otherwise):

        paired_weights(weights) -> RewardWeights

The monitor (`agents.free_agents.FreeAgentMonitor`) owns the state (windows of rewards,
graded answers, probations, the audit log) and applies a decision; a rule only judges the
evidence it is given, so a new rule is one small class. Built in, and what
`free_agents.swap_rule` names: `expectation` (`Expectation`, the default) and
`window-mean` (`WindowMean`, an absolute floor). Plug-ins add theirs with `SWAP_RULES.add`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

from orchestrator.config import FreeAgentSettings, RewardWeights
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
        return paired_verdict(pairs, incumbent, settings, settings.promote_margin)


def paired_verdict(
    pairs: Sequence[tuple[float, float]],
    incumbent: str,
    settings: FreeAgentSettings,
    margin: float,
) -> Decision | None:
    """After `probation_min` pairs: promote when the one-sided lower bound of the paired
    difference (challenger - incumbent) exceeds `margin` or the challenger's own lower
    bound clears `release_below`; reject when the difference's upper bound falls below
    `margin` or `probation_max` pairs pass."""
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
    if d_lo > margin or c_lo >= s.release_below:
        if d_lo <= margin:
            why = f"its mean reward's lower bound {c_lo:.3f} clears {s.release_below}"
        elif d_lo > 0:
            why = f"beats {incumbent} by {d:.3f} (lower bound {d_lo:.3f} > {margin:g})"
        else:
            why = (
                f"does not trail {incumbent} by more than {-margin:.3f} (difference "
                f"{d:+.3f}, lower bound {d_lo:.3f} > {margin:.3f})"
            )
        return Decision("promotion", f"after {n} shadow tasks it {why}", figures)
    if d_hi < margin or n >= s.probation_max:
        why = (
            f"it trails {incumbent} (upper bound {d_hi:.3f} < {margin:.3f})"
            if d_hi < margin
            else f"no verdict after {n} tasks (probation_max)"
        )
        return Decision("rejection", why, figures)
    return None


#: A graded answer: (right?, the accuracy predicted for it[, a probe?]).
Graded = tuple[bool, float] | tuple[bool, float, bool]


def cusum(graded: Sequence[tuple[bool, float]], drop: float) -> float:
    """The Bernoulli CUSUM statistic of `graded` answers: max(0, S + log-likelihood ratio)
    per answer, of "right with p - drop" against "right with p", p the accuracy predicted
    for that answer's question (clamped to [0.05, 0.95], so one surprising answer moves it
    by at most log(19))."""
    return climb(graded, drop)[0]


def climb(graded: Sequence[tuple[bool, float]], drop: float) -> tuple[float, int]:
    """(`cusum`'s statistic, and how many answers came before its current climb from 0)."""
    s, since = 0.0, 0
    for i, (right, expected) in enumerate(graded):
        s = cusum_step(s, right, expected, drop)
        if s == 0.0:
            since = i + 1
    return s, since


def cusum_step(s: float, right: bool, expected: float, drop: float) -> float:
    """One graded answer's step of `cusum`."""
    p0 = min(max(expected, 0.05), 0.95)
    p1 = max(p0 - drop, 0.01)
    return max(0.0, s + (math.log(p1 / p0) if right else math.log((1 - p1) / (1 - p0))))


#: Pseudo-answers at offset 0 in a level above an agent's predictions: a lucky first run
#: of answers does not raise the bar much. A level below them is taken as measured:
#: shrunk toward the predictions, it held a healthy agent its profile over-predicts by
#: 0.2 above what it does, which was released in 7% of 300-answer streams (2% unshrunk).
LEVEL_PRIOR = 20

#: A climb over an agent's first answers, judged at the level they set, that has come
#: this far toward an alarm (a share of `detect_threshold`) at their end keeps its
#: answers out of the level (`_calm_until`); smaller ones are the noise a healthy agent
#: makes (at 0.2, a little more often released when its profile over-predicts it).
CALM_BELOW = 0.3

#: Before `level_samples` answers are in, a climb `CALM_BELOW` along is judged at once
#: against the level of the answers before it, when there are at least this many (a
#: level from fewer is too noisy to hold an agent to).
INTERIM_MIN = 40


class Level(NamedTuple):
    """An agent's own level and the answers judged against it (`own_level`)."""

    offsets: dict[bool, float]
    """Its own offsets from its predictions, for tasks (False) and probes (True)."""
    judged: list[tuple[bool, float]]
    """Its latest answers, with their predictions shifted by `offsets`."""
    set_by: int
    """How many of its answers set `offsets` (0: none yet, the calibration floor)."""


def own_level(graded: Sequence[Graded], settings: FreeAgentSettings) -> Level:
    """The agent's own level, and its latest answers judged against it.

    The latest `detect_window` answers are judged; every older one sets the level: per
    kind (tasks, probes), the mean of (right - predicted) (shrunk toward 0 by
    `LEVEL_PRIOR` when above it), no lower than -`calibration_limit`, and for tasks no
    higher than 0. So a profile that over-predicts this agent (a small validation set)
    is corrected by its own record, a lucky first run of tasks does not raise the bar, a
    greedy agent is held to repeating its own right answers (probes) and one that
    samples to what it does, and a drop shows in the latest answers against the level
    before.

    Until `level_samples` answers set the level, every answer is judged at the lowest
    level calibration could set (-`calibration_limit` on both kinds): a fall that large
    from the profile is one no level would excuse, so an agent that breaks before its
    level is set (early in a run, or right after a swap) is caught then, not only once
    its level is set from its broken answers (in a pool whose specialist fell at request
    100, that took 122 requests).

    And an agent that breaks while its level is being set does not set it from its
    broken answers (which would excuse the fall): where the test run over them at the
    level they set is climbing (`_calm_until`), the answers of the climb are judged
    against the level of those before it: at once, once `INTERIM_MIN` answers came
    before it, and for good in the level that `level_samples` answers set. A 0.92 agent
    falling to 0.4 at its 40th-70th answer is released a median 12-17 answers later
    (58 when judged only once its level was set; 65-117 when set from broken answers).
    A healthy agent's climbs are short and rarely that far along, and a CUSUM that
    starts at 0 where one began is never above one that ran through it."""
    n = len(graded)
    lim = settings.calibration_limit
    if n <= settings.level_samples:
        ref = _calm_until(graded, settings)
        if ref == n or ref < INTERIM_MIN:
            return Level({False: -lim, True: -lim}, [(g[0], g[1] - lim) for g in graded], 0)
    else:
        ref = max(
            n - settings.detect_window, _calm_until(graded[: settings.level_samples], settings)
        )
    offsets = _offsets(graded[:ref], lim)
    return Level(offsets, [(g[0], g[1] + offsets[_is_probe(g)]) for g in graded[ref:]], ref)


def _offsets(seen: Sequence[Graded], lim: float) -> dict[bool, float]:
    """The level `seen` answers set, per kind (`own_level`)."""
    offsets = {}
    for kind in (False, True):
        mine = [g for g in seen if _is_probe(g) == kind]
        total = sum(g[0] - g[1] for g in mine)
        offset = total / (len(mine) + (LEVEL_PRIOR if total > 0 else 0)) if mine else 0.0
        # tasks only down: an agent luckier than its profile at first is not held to its
        # luck; probes up too: they are its own right answers, which a greedy agent
        # repeats, so its level there is its record's (shrunk), not its accuracy's
        offsets[kind] = max(offset, -lim) if kind else min(max(offset, -lim), 0.0)
    return offsets


def _calm_until(first: Sequence[Graded], settings: FreeAgentSettings) -> int:
    """How many of an agent's `first` answers set its level: all of them, unless the
    test run over them at the level they set ends `CALM_BELOW` of the way to an alarm
    or more; then those before its latest climb from 0."""
    offsets = _offsets(first, settings.calibration_limit)
    s, since = climb([(g[0], g[1] + offsets[_is_probe(g)]) for g in first], settings.detect_drop)
    return since if s >= CALM_BELOW * settings.detect_threshold else len(first)


def _is_probe(g: Graded) -> bool:
    return len(g) > 2 and bool(g[2])


class Expectation(WindowMean):
    """Release: an agent whose graded answers fall short of what its profile predicts for
    the very questions it was given, corrected by its own first answers (`own_level`),
    by a sequential test (a Bernoulli CUSUM tuned to a fall of `detect_drop`, alarm at
    `detect_threshold`). An agent less accurate by nature is predicted to be, so it is
    judged against itself: a drop is a change in the agent, not a low level. Verdicts as
    `window-mean`."""

    def release(self, window: Sequence[float], settings: FreeAgentSettings) -> Decision | None:
        return None  # rewards alone do not release: `release_graded` does

    def paired_weights(self, weights: RewardWeights) -> RewardWeights:
        """Probation pairs weigh right answers, failures and tokens, not agreement with
        the final answer: the incumbent is the expert asked, so the final answer is
        mostly its own, and agreeing with it is no evidence between the two. Counted,
        it favours the incumbent: a 0.89 challenger shadowing a specialist fallen from
        0.9 to 0.7 reached no verdict in 200 paired tasks (difference 0.02)."""
        return weights.model_copy(update={"synergy": 0.0})

    def verdict(
        self, pairs: Sequence[tuple[float, float]], incumbent: str, settings: FreeAgentSettings
    ) -> Decision | None:
        """As `window-mean`'s, with the burden shifted: the incumbent was released on a
        fall from its own level, so a challenger replaces it unless it trails it by more
        than `replace_within` (promotion on a lower bound above `promote_margin -
        replace_within`; rejection when the upper bound is below it). Asked to prove
        itself better instead, a challenger loses where the fall hits a small share of the
        incumbent's tasks (its own two subjects, a seventh of the traffic, in a pool
        where it also took a share of the rest): 0.04 better over 200 shadow tasks (lower
        bound -0.04), rejected, and the fallen specialist served on to the end."""
        margin = settings.promote_margin - settings.replace_within
        return paired_verdict(pairs, incumbent, settings, margin)

    def release_graded(
        self, graded: Sequence[Graded], settings: FreeAgentSettings
    ) -> Decision | None:
        return self.judge_graded(graded, settings)[1]

    def judge_graded(
        self, graded: Sequence[Graded], settings: FreeAgentSettings
    ) -> tuple[float, Decision | None]:
        """The statistic now and the release it calls for, in one pass (the monitor keeps
        the statistic: suspects, `/v1/agents`)."""
        offsets, judged, set_by = own_level(graded, settings)
        s, since = climb(judged, settings.detect_drop)
        if s < settings.detect_threshold:
            return s, None
        run = judged[since:] or judged
        n = len(run)
        right = sum(r for r, _ in run) / n
        expected = statistics.fmean(e for _, e in run)
        level = f"its predictions {offsets[False]:+.2f} on tasks, {offsets[True]:+.2f} on probes"
        if not set_by:
            level = (
                f"before its own level is set: its predictions {-settings.calibration_limit:+.2f}"
            )
        elif len(graded) <= settings.level_samples:
            level = f"its level so far, from its first {set_by} answers: {level}"
        return s, Decision(
            "release",
            f"right on {right:.0%} of its last {n} graded answers where its own record "
            f"predicts {expected:.0%} ({level}; CUSUM {s:.1f} >= {settings.detect_threshold})",
            {
                "cusum": s,
                "graded": n,
                "accuracy": right,
                "expected": expected,
                "offset": offsets[False],
                "probe_offset": offsets[True],
                "level_from": set_by,
            },
        )


SWAP_RULES: Registry[SwapRule] = Registry("swap rule", "free_agents.swap_rule")
SWAP_RULES.add("expectation", Expectation())
SWAP_RULES.add("window-mean", WindowMean())
