"""The sequential vote: how sure the answers so far make us, and what one or two more are
worth, so a routed strategy asks more only where it pays.

The model is the one the weighted vote assumes (`Estimate.weight`): the right answer is
one of `options`; an expert is right with its estimated accuracy p and otherwise names
one of the other options at random. Under it, the posterior of an answer a is
proportional to exp(sum of the weights of the experts that named a), and an option no
one named has weight 0. Wrong answers agree more often than at random (a shared
distractor), so `options` is the effective number, 1 + 1/q where q is how often two
wrong answers agreed when profiling: with q = 1/9 on ten-option questions that is all
ten; with q = 1/3, four.

`gain` is the expected rise in the chance that the final answer is right from asking
the next experts: the value of information of a vote. One more answer can be worth
nothing on its own (two that disagree leave a tie a third must break), so the strategy
also looks two answers ahead and counts the pair's gain per call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from orchestrator.answers import options_of
from orchestrator.types import Item


def options_in(item: Item) -> int:
    """How many answers a question admits: its listed options, 10 for a choice question
    that lists none the usual way, 1000 for an integer or free-form answer."""
    if item.answer_type in ("integer", "text"):
        return 1000
    return max(len(options_of(item.question)), 2) if "(A)" in item.question else 10


def effective_options(options: int, wrong_agreement: float) -> float:
    """The options in play: 1 + 1/q for wrong answers that agree a share q of the time,
    at least 2 and at most `options`."""
    if wrong_agreement <= 0:
        return float(options)
    return min(max(1.0 + 1.0 / wrong_agreement, 2.0), float(options))


def weight(accuracy: float, options: float) -> float:
    """An expert's vote: the log-odds that its answer is the right one rather than one
    given wrong answer among `options`. Never below a small floor, so a weak expert still
    breaks a tie it is part of."""
    p = min(max(accuracy, 1e-3), 1 - 1e-3)
    return max(math.log(p * max(options - 1, 1) / (1 - p)), 0.05)


def posterior(tally: Mapping[str, float], options: float) -> tuple[list[float], float, float]:
    """(posterior of each named answer, in `tally`'s order; posterior of each option no
    one named; how many such options) for answers whose weights sum to `tally`."""
    unnamed = max(options - len(tally), 0.0)
    top = max(tally.values(), default=0.0)
    named = [math.exp(s - top) for s in tally.values()]
    rest = math.exp(-top)
    z = sum(named) + unnamed * rest
    return [x / z for x in named], rest / z, unnamed


def _value(
    named: list[float], rest: float, unnamed: float, asks: Sequence[float], k: float
) -> float:
    """The expected chance of picking the right answer after asking experts of
    accuracies `asks` in turn, from this posterior."""
    if not asks:
        return max([*named, rest if unnamed >= 1 else 0.0])
    p, later = asks[0], asks[1:]
    miss = (1 - p) / max(k - 1, 1)
    total = 0.0
    for b in range(len(named)):  # the next answer repeats named answer b
        joint = [x * (p if t == b else miss) for t, x in enumerate(named)]
        z = sum(joint) + unnamed * rest * miss
        if z > 0:
            total += z * _value([x / z for x in joint], rest * miss / z, unnamed, later, k)
    if unnamed >= 1:  # the next answer is an option no one named yet (any of them)
        joint = [x * miss for x in named] + [rest * p]
        z = sum(joint) + (unnamed - 1) * rest * miss
        if z > 0:
            total += (
                unnamed * z * _value([x / z for x in joint], rest * miss / z, unnamed - 1, later, k)
            )
    return total


def gain(tally: Mapping[str, float], options: float, asks: Sequence[float]) -> float:
    """The expected rise in the chance of a right final answer (the vote's leader) from
    asking experts of accuracies `asks` after answers weighing `tally`."""
    named, rest, unnamed = posterior(tally, options)
    now = max([*named, rest if unnamed >= 1 else 0.0])
    return _value(named, rest, unnamed, asks, options) - now
