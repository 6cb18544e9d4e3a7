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

A second witness is the question's nearest validation questions (`skills.neighbours`):
the expert's similarity-weighted record on them, shrunk the same way. The two are
blended, p = w * p_neighbours + (1 - w) * p_keywords, with the weight w, the number of
neighbours and the prior strength k chosen when profiling by `calibrate`: each
validation question's outcome per expert predicted, leaving that question out, by each
setting, and the setting with the lowest Brier score kept. A pool whose keyword model
names the wrong subject then leans on the neighbours, one whose keywords are sound keeps
them.

The prior strength is chosen per expert: an expert alike on every subject is shrunk hard
towards its overall accuracy, a specialist little. One strength for the whole pool was a
compromise that failed the specialist on one subject of fourteen: 0.86 there and 0.26
elsewhere, its record on each of its subject's four keywords (about 16 answers each) was
pulled by 16 pseudo-answers at its overall 0.30 down to about 0.58, below a 0.69
generalist, which then outvoted it where the two disagreed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from skills.neighbours import Evidence
from skills.profiles import ModelProfile
from skills.sequential import weight

#: the blends `calibrate` tries: neighbour weights and numbers of neighbours
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
NEIGHBOURS = (5, 10, 20, 40)
#: the prior strengths `calibrate` tries when the config does not fix one
PRIOR_STRENGTHS = (1.0, 4.0, 16.0, 64.0)


@dataclass(frozen=True)
class Estimate:
    """An expert's estimated accuracy on one question, and the graded answers behind it."""

    expert: str
    accuracy: float
    evidence: float
    overall: float

    def weight(self, options: float) -> float:
        """The expert's vote weight among `options` (`skills.sequential.weight`)."""
        return weight(self.accuracy, options)


def estimate(
    expert: str,
    profile: ModelProfile | None,
    skills: Sequence[str],
    prior_strength: float = 4.0,
    near: Evidence | None = None,
    blend: float = 0.0,
) -> Estimate:
    """`expert`'s accuracy on a question whose keywords map to `skills` and whose
    nearest validation questions gave `near` (blended with weight `blend`)."""
    if profile is None:
        return Estimate(expert, 0.5, 0.0, 0.5)
    right, graded = profile.overall()
    return _estimate(expert, profile, skills, prior_strength, near, blend, right, graded)


def _estimate(
    expert: str,
    profile: ModelProfile,
    skills: Sequence[str],
    prior_strength: float,
    near: Evidence | None,
    blend: float,
    right: int,
    graded: int,
    leave_out: bool | None = None,
    own: Collection[str] | None = None,
) -> Estimate:
    """`estimate`, with the overall record given; `leave_out` (True: right, False: wrong)
    takes one graded answer out of the counts of the question's `own` keywords (default:
    all of `skills`; calibration's leave-one-out)."""
    mu = (right + 1) / (graded + 2)
    drop_r, drop_n = (int(leave_out), 1) if leave_out is not None else (0, 0)
    if skills:
        per_skill, ev_kw = [], 0.0
        for s in dict.fromkeys(skills):
            r, n = profile.counts.get(s, (0, 0))
            if own is None or s in own:
                r, n = max(r - drop_r, 0), max(n - drop_n, 0)
            per_skill.append((r + prior_strength * mu) / (n + prior_strength))
            ev_kw += n
        p_kw, ev_kw = sum(per_skill) / len(per_skill), ev_kw / len(per_skill)
    else:
        p_kw, ev_kw = mu, float(graded)
    if near is None or blend <= 0.0:
        return Estimate(expert, p_kw, ev_kw, mu)
    r_nn, n_nn = near
    p_nn = (r_nn + prior_strength * mu) / (n_nn + prior_strength)
    return Estimate(
        expert,
        blend * p_nn + (1 - blend) * p_kw,
        blend * n_nn + (1 - blend) * ev_kw,
        mu,
    )


def held_out(
    profiles: Mapping[str, ModelProfile],
    skills: Sequence[Sequence[str]],
    outcomes: Mapping[str, Sequence[bool]],
    near: Sequence[Mapping[str, Evidence]] | None,
    prior_strength: float | Mapping[str, float] = 4.0,
    blend: float = 0.0,
    own: Sequence[Sequence[str]] | None = None,
) -> list[dict[str, float]]:
    """Each validation question's estimate per expert with the question left out of the
    expert's counts (its own answer cannot vouch for it); `near` is each question's
    leave-one-out neighbour evidence. `own` gives each question's own keywords when
    `skills` are others (those its neighbours were given): only those counts hold its
    answer. `prior_strength` is one for every expert or one per expert."""
    totals = {e: profiles[e].overall() for e in outcomes if e in profiles}
    out: list[dict[str, float]] = [{} for _ in skills]
    for e, col in outcomes.items():
        if e not in totals:
            continue
        right, graded = totals[e]
        prior = prior_strength if isinstance(prior_strength, float | int) else prior_strength[e]
        for i, ok in enumerate(col):
            ev = near[i].get(e) if near is not None else None
            est = _estimate(
                e,
                profiles[e],
                skills[i],
                prior,
                ev,
                blend,
                right - ok,
                graded - 1,
                leave_out=bool(ok),
                own=set(own[i]) if own is not None else None,
            )
            out[i][e] = est.accuracy
    return out


@dataclass(frozen=True)
class Calibration:
    """How 'conclave' estimates, as leave-one-out chose it when profiling."""

    blend: float  # the neighbours' weight against the keywords
    neighbours: int  # how many nearest validation questions
    prior_strength: float  # the best one strength for every expert (for one not in `priors`)
    scores: dict[str, float]  # the Brier score of each setting tried
    priors: dict[str, float] = field(default_factory=dict)  # each expert's own strength

    def prior_of(self, expert: str) -> float:
        """The prior strength `expert`'s estimates use."""
        return self.priors.get(expert, self.prior_strength)


def calibrate(
    profiles: Mapping[str, ModelProfile],
    skills: Sequence[Sequence[str]],
    outcomes: Mapping[str, Sequence[bool]],
    near: Mapping[int, Sequence[Mapping[str, Evidence]]],
    priors: Sequence[float] = PRIOR_STRENGTHS,
) -> Calibration:
    """The estimate settings that best predict, leaving each validation question out in
    turn, whether each expert answered it right: the neighbours' weight, their number
    (`near` maps a number of neighbours to each question's leave-one-out evidence) and
    each expert's prior strength, with the Brier score of each setting tried
    ("w=<weight> k=<n> prior=<strength>", and "prior=each" for every expert at its own
    best). Ties go to the smaller weight (the keywords, the paper's witness), then to the
    first prior listed."""
    scores: dict[str, float] = {}
    k0 = min(near, default=0)
    experts = [e for e in outcomes if e in profiles]
    cells = sum(len(outcomes[e]) for e in experts)
    if not cells:
        return Calibration(0.0, k0, priors[0], scores)
    # each setting's squared error per expert: Brier scores add up over experts, so
    # each expert's best strength can be chosen apart from the others'
    errors: dict[tuple[float, int, float], dict[str, float]] = {}
    for prior in priors:
        for k, rows in sorted(near.items()):
            for w in BLEND_WEIGHTS:
                if w == 0.0 and k != k0:
                    continue  # without neighbours, their number does not matter
                est = held_out(profiles, skills, outcomes, rows, prior, w)
                errors[prior, k, w] = err = {
                    e: sum((est[i][e] - ok) ** 2 for i, ok in enumerate(outcomes[e]))
                    for e in experts
                }
                scores[f"w={w:g} k={k} prior={prior:g}"] = round(sum(err.values()) / cells, 5)
    best: tuple[float, float, int, dict[str, float]] = (math.inf, 0.0, k0, {})
    for k, w in dict.fromkeys((k, w) for _, k, w in errors):
        own = {e: min(priors, key=lambda p: errors[p, k, w][e]) for e in experts}
        brier = sum(errors[own[e], k, w][e] for e in experts) / cells
        if len(priors) > 1:  # one strength given (the config's): it is every expert's
            scores[f"w={w:g} k={k} prior=each"] = round(brier, 5)
        if (brier, w) < best[:2]:
            best = (brier, w, k, own)
    _, w, k, own = best
    common = min(priors, key=lambda p: sum(errors[p, k, w].values()))
    return Calibration(w, k, common, scores, own if len(priors) > 1 else {})


def routing_accuracy(
    estimates: Sequence[Mapping[str, float]], outcomes: Mapping[str, Sequence[bool]]
) -> float:
    """How often (%) the expert the estimates rank first answered right: per question,
    the mean outcome of the experts tied first. What asking the best alone would score
    with these estimates, the measure `choose_skills` compares sources by."""
    if not estimates:
        return 0.0
    total = 0.0
    for i, est in enumerate(estimates):
        known = {e: p for e, p in est.items() if e in outcomes}
        if not known:
            continue
        top = max(known.values())
        firsts = [e for e, p in known.items() if math.isclose(p, top)]
        total += sum(outcomes[e][i] for e in firsts) / len(firsts)
    return 100 * total / len(estimates)


def vote_accuracy(estimates: Sequence[Estimate], options: float, collusion: float = 0.0) -> float:
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
