"""Skill-based recruitment (Symbolic-MoE): which k experts answer a question.

For expert m and a question whose keywords map to inventory skills s1..sn:
- local suitability S(m, q) = sum of m's profile over s1..sn;
- global competence g(m): the sum of m's whole profile, shifted so the minimum is 1 when
  any is negative, raised to 1/T and normalised to a distribution;
- weight w(m) = S(m, q) * g(m) over the experts with S > 0; when no expert has S > 0 every
  S is shifted so the minimum is 1 first. A question with no keywords gets k experts at
  random.
k experts are drawn with these weights, with replacement as in the paper (one expert may
be drawn twice: it then answers once and counts twice in the vote) or distinct. The draw
is seeded by (seed, question id), so a question's experts do not depend on batch order.

The router is an extension point: `Router` is the contract (`select` one question's
experts), `ROUTERS` the registry the config's `routing.router.type` names. Built in:
`symbolic-moe` (`SkillRouter`, above).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

from orchestrator.config import RouterSettings
from orchestrator.errors import ConfigError
from orchestrator.registry import Registry
from orchestrator.types import ExpertScore, RoutingDecision


def global_competence(totals: Mapping[str, float], temperature: float) -> dict[str, float]:
    """g(m) from each expert's profile sum."""
    if not totals:
        return {}
    low = min(totals.values())
    shifted = {m: (t - low + 1 if low < 0 else t) for m, t in totals.items()}
    powered = {m: max(v, 0.0) ** (1.0 / temperature) for m, v in shifted.items()}
    z = sum(powered.values())
    if z <= 0:  # every profile sums to 0: no evidence either way
        return {m: 1.0 / len(powered) for m in powered}
    return {m: v / z for m, v in powered.items()}


Rule = Literal["weighted", "shifted", "random"]


class Router(Protocol):
    """Picks the experts for one question from its skills. Built with the serving
    experts' profiles (expert -> {skill: score}) and the config's router settings; the
    facade calls `select` once per question. Built in: `SkillRouter` ('symbolic-moe')."""

    experts: list[str]

    def select(
        self, item_id: str, skills: Sequence[str], keywords: Sequence[str] | None = None
    ) -> RoutingDecision: ...


#: name -> a callable (profiles, settings) -> Router; `routing.router.type` in the config
ROUTERS: Registry[Callable[[Mapping[str, Mapping[str, int]], RouterSettings], Router]] = Registry(
    "router", "routing.router.type"
)


def make_router(
    profiles: Mapping[str, Mapping[str, int]], settings: RouterSettings | None = None
) -> Router:
    """The router the settings name, over these profiles."""
    settings = settings or RouterSettings()
    return ROUTERS.get(settings.type)(profiles, settings)


class SkillRouter:
    """Recruits experts from their profiles (expert -> {skill: score})."""

    def __init__(
        self, profiles: Mapping[str, Mapping[str, int]], settings: RouterSettings | None = None
    ) -> None:
        if not profiles:
            raise ConfigError("the router needs at least one expert profile; run profiling first")
        self.settings = settings or RouterSettings()
        self.experts = sorted(profiles)
        self.profiles = {m: dict(profiles[m]) for m in self.experts}
        self.g = global_competence(
            {m: sum(p.values()) for m, p in self.profiles.items()}, self.settings.temperature
        )

    def weights(self, skills: Sequence[str]) -> tuple[Rule, dict[str, float], dict[str, float]]:
        """(rule, S per expert, normalised weight per expert) for a question's skills."""
        if not skills:
            n = len(self.experts)
            return "random", dict.fromkeys(self.experts, 0.0), dict.fromkeys(self.experts, 1.0 / n)
        local = {m: float(sum(self.profiles[m].get(s, 0) for s in skills)) for m in self.experts}
        rule: Rule = "weighted"
        if not any(v > 0 for v in local.values()):
            low = min(local.values())
            local = {m: v - low + 1 for m, v in local.items()}
            rule = "shifted"
        raw = {m: (local[m] * self.g[m] if local[m] > 0 else 0.0) for m in self.experts}
        z = sum(raw.values())
        if z <= 0:  # the only suitable experts have no global competence: use S alone
            raw = {m: max(local[m], 0.0) for m in self.experts}
            z = sum(raw.values())
        return rule, local, {m: v / z for m, v in raw.items()}

    def select(
        self, item_id: str, skills: Sequence[str], keywords: Sequence[str] | None = None
    ) -> RoutingDecision:
        rule, local, w = self.weights(skills)
        rng = random.Random(self._seed(item_id))
        k = self.settings.k
        if self.settings.replacement:
            chosen = rng.choices(self.experts, weights=[w[m] for m in self.experts], k=k)
        else:
            pool = [m for m in self.experts if w[m] > 0]
            chosen = []
            while pool and len(chosen) < k:
                pick = rng.choices(pool, weights=[w[m] for m in pool])[0]
                chosen.append(pick)
                pool.remove(pick)
        # model_construct: these values are computed here, not user input; validating
        # them again would double the cost of routing a question
        return RoutingDecision.model_construct(
            item_id=item_id,
            keywords=list(keywords if keywords is not None else skills),
            skills=list(skills),
            rule=rule,
            scores=[
                ExpertScore.model_construct(
                    expert=m, local=local[m], global_=self.g[m], weight=w[m]
                )
                for m in self.experts
            ],
            chosen=chosen,
        )

    def _seed(self, item_id: str) -> int:
        digest = hashlib.sha256(f"{self.settings.seed}|{item_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big")


ROUTERS.add("symbolic-moe", SkillRouter)
