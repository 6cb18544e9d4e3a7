"""Each expert's accuracy on a question, estimated with its uncertainty from profiling.

Symbolic-MoE scores an expert by +1/-1 sums over the question's skills times a global
prior; that sum cannot tell 3 right of 3 from 30 right of 57, and the prior buries a
specialist whose overall sum is low (see `skills.router`). Here each skill keyword keeps
counts (right, graded), and an expert's accuracy on a skill is the posterior mean of a
Beta prior centred on the expert's overall accuracy:

    p(m, s) = (right(m, s) + k * mu(m)) / (graded(m, s) + k),   mu(m) = (R + 1) / (N + 2)

with k = `prior_strength` pseudo-answers: a skill with little evidence is shrunk towards
what the expert does overall, one with much evidence speaks for itself. A question's
estimate is the mean over its skills; with no skills it is mu(m); an expert without a
profile (a free agent promoted without one) gets 0.5 with no evidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from skills.profiles import ModelProfile


@dataclass(frozen=True)
class Estimate:
    """An expert's estimated accuracy on one question, and the graded answers behind it."""

    expert: str
    accuracy: float
    evidence: float
    overall: float

    def weight(self, options: int) -> float:
        """The expert's vote weight: the log-odds that its answer is the right one rather
        than one given wrong answer among `options` (the optimal weight for independent
        experts whose mistakes spread over the wrong options). Never below a small floor,
        so a weak expert still breaks a tie it is part of."""
        p = min(max(self.accuracy, 1e-3), 1 - 1e-3)
        return max(math.log(p * max(options - 1, 1) / (1 - p)), 0.05)


def estimate(
    expert: str,
    profile: ModelProfile | None,
    skills: Sequence[str],
    prior_strength: float = 4.0,
) -> Estimate:
    """`expert`'s accuracy on a question whose keywords map to `skills`."""
    if profile is None:
        return Estimate(expert, 0.5, 0.0, 0.5)
    right, graded = profile.overall()
    mu = (right + 1) / (graded + 2)
    if not skills:
        return Estimate(expert, mu, float(graded), mu)
    per_skill, evidence = [], 0.0
    for s in dict.fromkeys(skills):
        r, n = profile.counts.get(s, (0, 0))
        per_skill.append((r + prior_strength * mu) / (n + prior_strength))
        evidence += n
    return Estimate(expert, sum(per_skill) / len(per_skill), evidence / len(per_skill), mu)


def vote_accuracy(estimates: Sequence[Estimate], options: int, collusion: float = 0.0) -> float:
    """The chance that the weighted vote of these experts is right if they err
    independently: a wrong answer is the question's one shared distractor with
    probability `collusion` (so wrong answers can agree and outvote a right one), else a
    wrong answer of its own; a tie is a fair coin. What asking them all is worth, to
    compare with asking the best alone."""
    weights = [e.weight(options) for e in estimates]
    total = 0.0
    # each expert: 0 right, 1 the shared distractor, 2 a wrong answer of its own
    for pattern in range(3 ** len(estimates)):
        prob, right_w, shared_w, own = 1.0, 0.0, 0.0, []
        code = pattern
        for i, e in enumerate(estimates):
            code, kind = divmod(code, 3)
            if kind == 0:
                prob *= e.accuracy
                right_w += weights[i]
            elif kind == 1:
                prob *= (1 - e.accuracy) * collusion
                shared_w += weights[i]
            else:
                prob *= (1 - e.accuracy) * (1 - collusion)
                own.append(weights[i])
        if prob == 0 or right_w == 0:
            continue
        rivals = [w for w in (shared_w, *own) if w > 0]
        top = max(rivals, default=0.0)
        if right_w > top + 1e-12:
            total += prob
        elif math.isclose(right_w, top):
            total += prob / (1 + sum(math.isclose(w, right_w) for w in rivals))
    return total
