"""The recruitment math against hand-computed cases, and its determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from orchestrator.config import RouterSettings
from orchestrator.errors import ConfigError
from skills.router import SkillRouter, global_competence

PROFILES = {"a": {"x": 2, "y": -1}, "b": {"x": -1, "y": 3}, "c": {"x": 0}}


def weights(router: SkillRouter, skills: list[str]) -> dict[str, float]:
    return {m: round(w, 4) for m, w in router.weights(skills)[2].items()}


def test_global_competence_without_and_with_negative_totals():
    # totals 1, 2, 0: no shift; squared (T = 0.5): 1, 4, 0
    assert global_competence({"a": 1, "b": 2, "c": 0}, 0.5) == {"a": 0.2, "b": 0.8, "c": 0.0}
    # totals -3 and 1: shifted to 1 and 5, squared 1 and 25
    g = global_competence({"a": -3, "b": 1}, 0.5)
    assert g == pytest.approx({"a": 1 / 26, "b": 25 / 26})
    # T = 1 keeps the proportions
    assert global_competence({"a": 1, "b": 3}, 1.0) == {"a": 0.25, "b": 0.75}


def test_only_experts_with_positive_suitability_are_weighted():
    r = SkillRouter(PROFILES)
    assert r.weights(["x"])[0] == "weighted"
    assert weights(r, ["x"]) == {"a": 1.0, "b": 0.0, "c": 0.0}
    # S = a:1 b:2 c:0; w = 1*0.2 : 2*0.8
    assert weights(r, ["x", "y"]) == {"a": round(0.2 / 1.8, 4), "b": round(1.6 / 1.8, 4), "c": 0.0}


def test_no_positive_suitability_shifts_every_score():
    r = SkillRouter({"a": {"x": -2}, "b": {"x": -5}})
    rule, local, w = r.weights(["x"])
    assert rule == "shifted"
    assert local == {"a": 4.0, "b": 1.0}  # shifted so the minimum is 1
    # g: totals -2, -5 -> 4, 1 -> squared 16, 1; w = 4*16/17 : 1*1/17
    assert w == pytest.approx({"a": 64 / 65, "b": 1 / 65})
    # a skill no profile has: all S are 0, shifted to 1, so the weights are g
    assert weights(SkillRouter(PROFILES), ["unseen"]) == {"a": 0.2, "b": 0.8, "c": 0.0}


def test_no_keywords_draws_at_random():
    r = SkillRouter(PROFILES, RouterSettings(k=3))
    d = r.select("q1", [])
    assert d.rule == "random"
    assert [s.weight for s in d.scores] == pytest.approx([1 / 3] * 3)
    assert len(d.chosen) == 3


def test_ties_and_draws_are_deterministic_under_the_seed():
    tied = {"a": {"x": 1}, "b": {"x": 1}}
    r1 = SkillRouter(tied, RouterSettings(k=3, seed=7))
    r2 = SkillRouter(tied, RouterSettings(k=3, seed=7))
    picks1 = [r1.select(f"q{i}", ["x"]).chosen for i in range(50)]
    picks2 = [r2.select(f"q{i}", ["x"]).chosen for i in reversed(range(50))][::-1]
    assert picks1 == picks2  # same question, same experts, whatever the order
    counts = Counter(m for p in picks1 for m in p)
    assert counts["a"] > 40 and counts["b"] > 40  # a tie is a fair coin, not a fixed pick
    other = [
        SkillRouter(tied, RouterSettings(k=3, seed=8)).select(f"q{i}", ["x"]).chosen
        for i in range(50)
    ]
    assert other != picks1


def test_draws_follow_the_weights_with_and_without_replacement():
    r = SkillRouter(PROFILES, RouterSettings(k=3, replacement=True))
    assert all(r.select(f"q{i}", ["x"]).chosen == ["a", "a", "a"] for i in range(20))
    counts = Counter(m for i in range(2000) for m in r.select(f"q{i}", ["x", "y"]).chosen)
    assert counts["c"] == 0
    assert 0.08 < counts["a"] / 6000 < 0.14  # expected 0.111
    distinct = SkillRouter(PROFILES, RouterSettings(k=3, replacement=False))
    d = distinct.select("q", ["x", "y"])
    assert sorted(d.chosen) == ["a", "b"]  # c has weight 0: fewer than k are suitable


def test_decision_explains_itself():
    d = SkillRouter(PROFILES).select("q", ["x", "y"], keywords=["algebra", "y-thing"])
    assert d.keywords == ["algebra", "y-thing"] and d.skills == ["x", "y"]
    by = {s.expert: s for s in d.scores}
    assert by["b"].local == 2.0 and by["b"].global_ == 0.8
    assert d.model_dump(by_alias=True)["scores"][0].keys() >= {
        "expert",
        "local",
        "global",
        "weight",
    }


def test_router_needs_profiles():
    with pytest.raises(ConfigError, match="at least one expert profile"):
        SkillRouter({})
