"""The `conclave` strategy: estimates, selection and escalation on hand-made cases, and
through the facade on skill-aware fake experts."""

from __future__ import annotations

import pytest

from orchestrator.strategies import Plan, StrategyContext, get_strategy
from orchestrator.types import ExpertAnswer, RouteExplanation
from skills.estimates import estimate, vote_accuracy
from skills.profiles import ModelProfile, ProfileSet
from tests.unit.test_conclave import items, make


def _profile(expert: str, graded: list[tuple[list[str], bool]]) -> ModelProfile:
    ps = ProfileSet().update(((expert, kw, ok) for kw, ok in graded), dataset="d", split="v")
    return ps.profiles[expert]


def test_estimates_weigh_evidence_and_shrink_to_the_overall_accuracy():
    # a specialist: 9 of 10 on math, 1 of 20 elsewhere; a generalist: 6 of 10 everywhere
    spec = _profile(
        "spec", [(["math"], i < 9) for i in range(10)] + [(["law"], i < 1) for i in range(20)]
    )
    gen = _profile(
        "gen", [(["math"], i < 6) for i in range(10)] + [(["law"], i < 12) for i in range(20)]
    )
    s, g = estimate("spec", spec, ["math"]), estimate("gen", gen, ["math"])
    # the specialist's low overall accuracy does not bury it on its own skill
    assert s.accuracy > g.accuracy and s.overall < g.overall
    assert s.evidence == 10
    assert 0.7 < s.accuracy < 0.9  # 9/10, shrunk towards its overall 11/32
    # no keywords, or keywords never graded: the overall accuracy
    assert estimate("spec", spec, []).accuracy == pytest.approx(11 / 32)
    assert estimate("spec", spec, ["chess"]).accuracy == pytest.approx(11 / 32)
    # more evidence, less shrinking
    weak = estimate("spec", spec, ["math"], prior_strength=40)
    assert weak.accuracy < s.accuracy
    # an expert with no profile: a coin, with no evidence
    none = estimate("new", None, ["math"])
    assert (none.accuracy, none.evidence) == (0.5, 0.0)


def test_the_vote_is_worth_more_than_one_expert_only_when_no_one_dominates():
    from skills.estimates import Estimate

    def e(name: str, p: float) -> Estimate:
        return Estimate(name, p, 10, p)

    assert vote_accuracy([e("a", 0.7)], 10) == pytest.approx(0.7)
    # three equal experts: right when two are, or one is and the two wrong differ (a coin)
    equal = [e("a", 0.6), e("b", 0.6), e("c", 0.6)]
    assert vote_accuracy(equal, 10) == pytest.approx(0.648 + 3 * 0.6 * 0.16 / 3)
    assert vote_accuracy(equal, 10) > 0.6
    # a dominant expert: the weaker two cannot outvote it, so the vote adds nothing
    dominant = [e("a", 0.9), e("b", 0.3), e("c", 0.3)]
    assert vote_accuracy(dominant, 10) == pytest.approx(0.9)


def test_wrong_answers_that_agree_make_the_vote_worth_less():
    from orchestrator.profiling import wrong_agreement
    from orchestrator.types import Item
    from skills.estimates import Estimate

    team = [
        Estimate("a", 0.78, 10, 0.78),
        Estimate("b", 0.52, 10, 0.5),
        Estimate("c", 0.32, 10, 0.3),
    ]
    spread, ganging = vote_accuracy(team, 10, 0.0), vote_accuracy(team, 10, 0.5)
    # with spread mistakes the two weaker experts can only add right answers; when their
    # mistakes agree they also outvote the best one when it is right
    assert spread > 0.78 > ganging
    item = Item(id="q", question="Q? The options are: (A) a (B) b (C) c", gold_answer="A")
    answers = [ExpertAnswer(expert=e, choice=c) for e, c in zip("wxyz", "BBCA", strict=True)]
    assert wrong_agreement([item], [answers]) == pytest.approx(1 / 3, abs=1e-4)  # B=B, B/C, B/C


def _escalation(weights: dict[str, float], asked: list[str], budget: int = 3) -> Plan:
    return Plan(
        list(asked),
        weights=weights,
        explanation=RouteExplanation(
            estimates=dict.fromkeys(weights, 0.5), budget=budget, stages=[list(asked)]
        ),
    )


@pytest.mark.parametrize(
    ("choices", "weights", "expected", "why"),
    [
        (["A", "B"], {"a": 1.0, "b": 0.9, "c": 0.8}, ["c"], ""),  # a tie to break
        (["A", "A"], {"a": 1.0, "b": 0.9, "c": 0.8}, [], "2 answers agree"),
        (["A", "B"], {"a": 3.0, "b": 0.5, "c": 0.4}, [], "could not change the outcome"),
        (["A"], {"a": 1.0, "b": 0.9, "c": 0.8}, [], "reliably best"),
        ([None], {"a": 1.0, "b": 0.9, "c": 0.8}, ["b"], ""),  # no option named: ask on
        (["A", "B", "C"], {"a": 1.0, "b": 0.9, "c": 0.8, "d": 0.7}, [], "budget is spent"),
        (["A", "B", "C"], {"a": 1.0, "b": 0.9, "c": 0.8}, [], "every serving expert answered"),
    ],
)
def test_escalation_asks_the_next_expert_only_while_it_could_matter(
    choices, weights, expected, why
):
    strat = get_strategy("conclave")
    asked = list(weights)[: len(choices)]
    plan = _escalation(weights, asked)
    answers = [ExpertAnswer(expert=ex, choice=ch) for ex, ch in zip(asked, choices, strict=True)]
    with make() as c:
        ctx = StrategyContext(c, list(weights))
        assert strat.escalate(ctx, items("test")[:1], [plan], [answers]) == [expected]
    assert why in plan.explanation.stopped
    if expected:
        assert plan.explanation.stages[-1] == expected


def test_the_budget_is_an_average_spent_on_the_most_doubtful_questions_first():
    strat = get_strategy("conclave")
    weights = {"a": 1.0, "b": 0.9, "c": 0.8, "d": 0.7, "e": 0.6}
    easy = _escalation(weights, ["a"])  # one answer from a reliably best expert
    split = _escalation(weights, ["a", "b", "c"])  # three different answers
    close = _escalation(weights, ["a", "b"])  # two different answers
    answers = [
        [ExpertAnswer(expert="a", choice="A")],
        [ExpertAnswer(expert=e, choice=c) for e, c in zip("abc", "ABC", strict=True)],
        [ExpertAnswer(expert=e, choice=c) for e, c in zip("ab", "AB", strict=True)],
    ]
    with make() as c:
        ctx = StrategyContext(c, list(weights))
        more = strat.escalate(ctx, items("test")[:3], [easy, split, close], answers)
    # 6 calls so far, 9 allowed: the easy question's savings buy the other two one more
    assert more == [[], ["d"], ["c"]]
    assert "reliably best" in easy.explanation.stopped


def test_conclave_routes_each_question_to_its_specialist_alone():
    with make(aggregator="vote") as c:
        c.profile(items("validation"), dataset="skillmix")
        test = items("test")
        traces = c.answer(test, "conclave")
        again = c.answer(test, "conclave")
    assert all(t.correct for t in traces)
    for t in traces:
        why = t.explanation
        assert why is not None and why.stopped.startswith("the best expert answered")
        assert [a.expert for a in t.answers] == why.stages[0] and len(why.stages[0]) == 1
        best = max(why.estimates, key=why.estimates.get)
        assert t.answers[0].expert == best and why.estimates[best] > 0.6
        assert t.calls == 2 + 1  # two keyword samples, one expert
    # deterministic: the same questions get the same experts, answers and reasons
    assert [t.model_dump() for t in again] == [t.model_dump() for t in traces]


def test_without_keywords_the_best_expert_overall_answers():
    with make() as c:
        c.profile(items("validation"), dataset="skillmix")
        c.inventory = None  # no skills for any question: estimates fall back to overall
        traces = c.answer(items("test")[:4], "conclave")
    for t in traces:
        ests = t.explanation.estimates
        # geo, num and cal tie overall (a third each); dud trails: never the one asked first
        assert "dud" not in t.explanation.stages[0]
        assert ests["dud"] < min(ests["geo"], ests["num"], ests["cal"])
