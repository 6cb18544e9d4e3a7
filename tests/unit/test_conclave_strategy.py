"""The `conclave` strategy: estimates, selection and escalation on hand-made cases, and
through the facade on skill-aware fake experts."""

from __future__ import annotations

import math

import pytest

from orchestrator.strategies import Plan, StrategyContext, get_strategy
from orchestrator.types import ExpertAnswer, RouteExplanation
from skills.estimates import estimate, vote_accuracy
from skills.profiles import ModelProfile, ProfileSet
from skills.sequential import effective_options, gain, posterior, weight
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


def _escalation(accuracy: dict[str, float], asked: list[str], budget: int = 3) -> Plan:
    return Plan(
        list(asked),
        weights={e: weight(p, 10) for e, p in accuracy.items()},
        explanation=RouteExplanation(
            estimates=accuracy, budget=budget, stages=[list(asked)], options=10
        ),
    )


EVEN = {"a": 0.6, "b": 0.58, "c": 0.55}


@pytest.mark.parametrize(
    ("choices", "accuracy", "expected", "why"),
    [
        (["A", "B"], EVEN, ["c"], ""),  # a tie to break
        (["A", "A"], EVEN, [], "2 answers agree"),
        (["A", "B"], {"a": 0.95, "b": 0.3, "c": 0.3}, [], "would add under"),
        (["A"], EVEN, [], "reliably best"),
        ([None], EVEN, ["b"], ""),  # no option named: ask on
        (["A", "B", "C"], {**EVEN, "d": 0.5}, [], "budget is spent"),
        (["A", "B", "C"], EVEN, [], "every serving expert answered"),
    ],
)
def test_escalation_asks_the_next_expert_only_while_it_could_matter(
    choices, accuracy, expected, why
):
    strat = get_strategy("conclave")
    asked = list(accuracy)[: len(choices)]
    plan = _escalation(accuracy, asked)
    answers = [ExpertAnswer(expert=ex, choice=ch) for ex, ch in zip(asked, choices, strict=True)]
    with make() as c:
        ctx = StrategyContext(c, list(accuracy))
        assert strat.escalate(ctx, items("test")[:1], [plan], [answers]) == [expected]
    assert why in plan.explanation.stopped
    if expected:
        assert plan.explanation.stages[-1] == expected
    else:  # how sure it was when it stopped: the vote's leader's posterior
        assert 0 < plan.explanation.confidence <= 1


def test_escalation_skips_an_expert_that_died_after_the_plan():
    """A tie to break: 'c' is next, but its engine died since the question was planned,
    so the next one serving is asked instead (not a stage spent failing on 'c'), and the
    trace says it failed over from 'c'. With no one else serving, it says why it stopped."""
    strat = get_strategy("conclave")
    accuracy = {**EVEN, "d": 0.5}
    plan = _escalation(accuracy, ["a", "b"])
    answers = [ExpertAnswer(expert="a", choice="A"), ExpertAnswer(expert="b", choice="B")]
    with make() as c:
        c.pool.unavailable = lambda: {"c"}  # type: ignore[method-assign]
        ctx = StrategyContext(c, list(accuracy))
        assert strat.escalate(ctx, items("test")[:1], [plan], [answers]) == [["d"]]
        assert plan.explanation.down == ["c"]
        alone = _escalation(EVEN, ["a", "b"])
        assert strat.escalate(ctx, items("test")[:1], [alone], [answers]) == [[]]
        assert alone.explanation.down == ["c"]
        assert alone.explanation.stopped == "the experts left are down (c)"


def test_the_budget_is_an_average_spent_where_one_more_answer_is_worth_most():
    strat = get_strategy("conclave")
    acc = {"a": 0.6, "b": 0.58, "c": 0.56, "d": 0.55, "e": 0.5}
    cases = {
        "easy": (["a"], "A"),  # one answer from a reliably best expert
        "split": (["a", "b", "c"], "ABC"),  # three different answers
        "close": (["a", "b"], "AB"),  # two different answers
    }

    def run(names: list[str]) -> tuple[list[list[str]], list[Plan]]:
        plans = [_escalation(acc, cases[n][0]) for n in names]
        answers = [
            [ExpertAnswer(expert=e, choice=ch) for e, ch in zip(*cases[n], strict=True)]
            for n in names
        ]
        with make() as c:  # max_expert_calls: 3
            ctx = StrategyContext(c, list(acc))
            return strat.escalate(ctx, items("test")[: len(names)], plans, answers), plans

    # 6 calls so far, 9 allowed: the easy question's savings buy the other two one more
    more, plans = run(["easy", "split", "close"])
    assert more == [[], ["d"], ["c"]]
    assert "reliably best" in plans[0].explanation.stopped
    # 5 calls so far, 6 allowed: the one more goes where it adds most to the chance of a
    # right answer
    w = {e: weight(p, 10) for e, p in acc.items()}
    three, two = {"A": w["a"], "B": w["b"], "C": w["c"]}, {"A": w["a"], "B": w["b"]}
    split = max(gain(three, 10, [acc["d"]]), gain(three, 10, [acc["d"], acc["e"]]) / 2)
    close = max(gain(two, 10, [acc["c"]]), gain(two, 10, [acc["c"], acc["d"]]) / 2)
    more, plans = run(["split", "close"])
    assert more == ([[], ["c"]] if close > split else [["d"], []])
    assert "budget is spent" in plans[0 if close > split else 1].explanation.stopped


def test_the_sequential_vote_values_answers_as_its_model_says():
    # two agreeing answers from 0.6 experts among ten options: almost surely right
    w = weight(0.6, 10)
    named, rest, unnamed = posterior({"A": 2 * w}, 10)
    assert named[0] == pytest.approx(1 / (1 + 9 * math.exp(-2 * w)))
    assert named[0] + unnamed * rest == pytest.approx(1)
    # one more answer to a tie is worth little alone (it only breaks the tie), two more
    # are worth more per call than the one; answers that agree leave little to gain
    tie = {"A": w, "B": w}
    assert gain(tie, 10, [0.6, 0.6]) / 2 > 0.05
    assert gain({"A": 2 * w}, 10, [0.6, 0.6]) < 0.02
    # no answer to a question: the first one is worth its accuracy over a guess
    assert gain({}, 10, [0.6]) == pytest.approx(0.6 - 0.1)
    # wrong answers that agree often: fewer options in play
    assert effective_options(10, 0.0) == 10
    assert effective_options(10, 1 / 3) == pytest.approx(4)
    assert effective_options(4, 0.05) == 4 and effective_options(10, 1.0) == 2


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


def test_an_aggregator_asked_only_where_answers_split():
    from agents.aggregators import AggregationContext, Synthesis
    from orchestrator.types import Item
    from workers.batch import GenerationResult

    asked = []

    def ask(reqs):
        asked.extend(r.item_id for r in reqs)
        return [
            GenerationResult(item_id=r.item_id, expert=r.expert, text="The answer is (C).")
            for r in reqs
        ]

    q = "Q? The options are: (A) a (B) b (C) c"
    its = [Item(id="agree", question=q), Item(id="split", question=q)]

    def ans(*choices):
        return [
            ExpertAnswer(expert=f"e{i}", choice=c, text=f"The answer is ({c}).", weight=1.0)
            for i, c in enumerate(choices)
        ]

    answers = [ans("A", "A"), ans("A", "B")]
    outs = Synthesis("agg", when_split=True).combine(its, answers, AggregationContext(ask=ask))
    assert asked == ["split"]
    assert [(o.choice, o.calls, o.text) for o in outs] == [
        ("A", 0, None),
        ("C", 1, "The answer is (C)."),
    ]
    asked.clear()  # the paper's MoA: every question goes to the LLM
    Synthesis("agg").combine(its, answers, AggregationContext(ask=ask))
    assert asked == ["agree", "split"]


@pytest.mark.parametrize(("llm_right", "chosen"), [(True, "agg"), (False, None)])
def test_an_aggregator_llm_is_chosen_only_if_it_beats_the_vote_on_both_halves(llm_right, chosen):
    from types import SimpleNamespace

    from agents.aggregators import Combined, Vote
    from orchestrator.profiling import MIN_SPLIT_QUESTIONS, choose_synthesis
    from orchestrator.types import Item

    q = "Q? The options are: (A) a (B) b (C) c (D) d"
    n = 2 * MIN_SPLIT_QUESTIONS + 10
    # the best expert is right 60% of the time; the three split on every other question
    items_, per_item, held = [], [], []
    for i in range(n):
        gold = "A"
        first = "A" if i % 5 < 3 else "B"
        others = ("C", "D") if i % 2 else (first, first)
        items_.append(Item(id=f"v{i}", question=q, gold_answer=gold))
        per_item.append(
            [
                ExpertAnswer(expert=e, choice=c, text=f"({c})")
                for e, c in zip(("x", "y", "z", "w"), (first, *others, "B"), strict=True)
            ]
        )
        held.append({"x": 0.6, "y": 0.4, "z": 0.35, "w": 0.1})

    def aggregate(its, answers, cand, progress=False):
        if cand == "vote":
            return Vote().combine(its, answers, None)
        return [Combined(it.gold_answer if llm_right else "D") for it in its]

    fake = SimpleNamespace(
        with_role=lambda role: ["agg"],
        state=SimpleNamespace(wrong_agreement=0.0),
        aggregate=aggregate,
    )
    got, scores = choose_synthesis(fake, items_, per_item, held)
    assert got == chosen, scores
    assert scores["split questions"] == n // 2  # the agreeing questions are not asked
    assert scores["agg/choose"] == (100.0 if llm_right else 0.0)
    assert 0 < scores["vote/choose"] < 100  # the vote follows the best expert: 60%
    # too few split questions to judge: the vote, whatever the LLM
    got, scores = choose_synthesis(fake, items_[:10], per_item[:10], held[:10])
    assert got is None and scores == {"split questions": 5.0}


def test_serving_settings_reuse_the_profile_and_learning_settings_do_not():
    from orchestrator.profiling import profile_key

    with make() as c:
        cfg, its = c.config, items("validation")

    def key(**routing):
        return profile_key(
            cfg.model_copy(update={"routing": cfg.routing.model_copy(update=routing)}),
            its,
            "skillmix",
        )

    same = key()
    assert key(max_expert_calls=5, skills="embedding", fallback="geo", strategy="majority") == same
    assert key(prior_strength=16.0) != same
    moved = cfg.pool.experts[0].model_copy(
        update={"resources": cfg.pool.experts[0].resources.model_copy(update={"num_cpus": 2})}
    )
    pool = cfg.pool.model_copy(update={"experts": [moved, *cfg.pool.experts[1:]]})
    assert profile_key(cfg.model_copy(update={"pool": pool}), its, "skillmix") == same


@pytest.mark.parametrize(("policy", "budget"), [("failover", 3), ("failover", 1), ("fail", 3)])
def test_a_dead_expert_is_failed_over_and_skipped_while_it_restarts(policy, budget):
    """The expert a question is routed to dies: its engine restarts in the background.
    'failover' (the default) asks the next best expert in the same request, then skips
    the dead one while it restarts, and says so; 'fail' answers with its error. A
    question left with no answer is owed one more expert even past the budget. Once the
    dead one is back, it is asked again."""
    import threading

    from orchestrator.errors import EngineDeadError
    from tests.unit.test_conclave import ROWS

    hold = threading.Event()
    with make(aggregator="vote") as c:
        c.profile(items("validation"), dataset="skillmix")
        routing = c.config.routing.model_copy(
            update={"on_expert_down": policy, "max_expert_calls": budget}
        )
        c.config = c.config.model_copy(update={"routing": routing})
        geo = c.pool.backends["geo"]
        qs = [it for it in items("test") if ROWS[it.question].category == "geography"][:2]

        def dies(requests):
            geo._loaded = False
            raise EngineDeadError("engine process exited (fake)", expert="geo")

        def restarts():  # held until the test lets it finish
            hold.wait(10)
            geo._loaded = True

        geo.generate, geo.load = dies, restarts
        (first,) = c.answer(qs[:1], "conclave")
        why = first.explanation
        assert why.down == ["geo"] and c.pool.unavailable() == {"geo"}
        assert first.answers[0].expert == "geo"
        assert first.answers[0].error_type == "ExpertUnavailableError"
        if policy == "fail":
            assert len(first.answers) == 1 and first.choice is None
            assert "geo down" in why.stopped
        else:  # the next best answered in the same request (and more, as they are weak)
            assert len(first.answers) >= 2 and not any(a.error for a in first.answers[1:])
            assert budget > 1 or len(first.answers) == 2  # owed one answer, no more
            assert first.choice is not None
            (second,) = c.answer(qs[1:], "conclave")  # planned while geo restarts
            assert "geo" not in [a.expert for a in second.answers]
            assert second.explanation.down == ["geo"] and second.choice is not None
        del geo.generate  # the restarted engine answers again
        hold.set()
        for _ in range(100):
            if not c.pool.unavailable():
                break
            threading.Event().wait(0.05)
        (back,) = c.answer(qs[1:], "conclave")
        assert [a.expert for a in back.answers] == ["geo"] and back.correct
        assert back.explanation.down == [] and c.pool.stats.restarts == 1


def test_an_expert_whose_model_fails_to_load_is_planned_past_until_its_hold_ends():
    """The expert a question is routed to cannot load its model: that question is
    answered by the next best in the same request, and the questions after it are
    planned past the expert at no cost (no load tried, the trace says it was down) until
    pool.down_hold_s is over; then it is tried again and, loading, answers again."""
    from orchestrator.errors import ModelLoadError
    from tests.unit.test_conclave import ROWS

    with make(aggregator="vote") as c:
        c.profile(items("validation"), dataset="skillmix")
        qs = [it for it in items("test") if ROWS[it.question].category == "geography"][:3]
        geo, now, tries = c.pool.backends["geo"], [0.0], []
        c.pool.holds.clock = lambda: now[0]
        c.pool.unload("geo")

        def fails() -> None:
            tries.append(now[0])
            raise ModelLoadError("no such model file (fake)", expert="geo")

        geo.load = fails
        (first,) = c.answer(qs[:1], "conclave")
        assert [a.error_type for a in first.answers][:1] == ["ModelLoadError"]
        assert first.choice is not None and not any(a.error for a in first.answers[1:])
        assert c.pool.unavailable() == {"geo"} and tries == [0.0]
        (second,) = c.answer(qs[1:2], "conclave")
        assert "geo" not in [a.expert for a in second.answers] and tries == [0.0]
        assert second.explanation.down == ["geo"] and second.choice is not None
        del geo.load  # fixed; the hold ends
        now[0] = c.config.pool.down_hold_s
        (back,) = c.answer(qs[2:], "conclave")
        assert [a.expert for a in back.answers] == ["geo"] and back.correct
        assert back.explanation.down == [] and c.pool.unavailable() == set()


def test_lanes_follow_the_plan_set_failovers_apart_and_need_no_model_call():
    """The gateway's batching lane of a routed question is whom 'conclave' asks first,
    read from the question index and the profile alone; a question failed over from a
    dead expert gets a lane of its own; where planning would ask the keyword model, or
    another strategy serves, every question shares one lane."""
    with make() as c:
        c.profile(items("validation"), dataset="skillmix")
        from tests.unit.test_conclave import ROWS

        by_category = {ROWS[it.question].category: it for it in items("test")}
        qs = list(by_category.values())

        def serve(**routing):
            c.config = c.config.model_copy(
                update={"routing": c.config.routing.model_copy(update=routing)}
            )

        serve(skills="embedding")
        asked: list[object] = []
        run = c.pool.run
        c.pool.run = lambda reqs, **kw: asked.extend(reqs) or run(reqs, **kw)  # type: ignore[method-assign]
        lanes = c.lanes(qs)
        assert asked == []  # no model was asked
        assert lanes == [",".join(p.experts) for p in c.plan(qs)]
        assert len(set(lanes)) > 1  # different questions, different experts
        first = lanes[0].split(",")[0]
        c.pool.unavailable = lambda: {first}  # type: ignore[method-assign]
        moved = c.lanes(qs[:1])[0]
        assert moved.endswith(f" for {first}") and not moved.startswith(first)
        serve(skills="keywords")
        assert c.lanes(qs) == [""] * len(qs)
        serve(skills="embedding", strategy="symbolic-moe")
        assert c.lanes(qs) == [""] * len(qs)


def staged(name: str, first: str, more, combiner: str = "vote"):
    """A strategy for tests, registered as `name`: asks `first` for every item, then per
    stage the experts `more(i, item, answers so far)` names ([]: the item is done);
    combines by `combiner`. Remove it with `STRATEGIES.remove(name)`."""
    from orchestrator.strategies import STRATEGIES

    class Staged:
        description = "a test's scripted stages"
        needs_profile = needs_expert = asks_every_expert = featured = monitored = False

        def plan(self, ctx, its):
            return [Plan([first]) for _ in its]

        def escalate(self, ctx, its, plans, answers):
            return [more(i, it, a) for i, (it, a) in enumerate(zip(its, answers, strict=True))]

        def combiner(self, ctx):
            return combiner

    Staged.name = name
    STRATEGIES.add(name, Staged())


@pytest.mark.parametrize("aggregator", ["vote", "agg"])
def test_an_item_done_early_is_final_before_the_next_stage(aggregator):
    """`answer(on_done=)`: combined by a vote, an item its strategy stops escalating is
    final (heard) before the batch's next stage is asked, so its caller need not wait for
    its neighbours; with an LLM aggregator every item is final after the last stage. A
    final item takes feedback at once; the answers are the same as without `on_done`."""
    from orchestrator.strategies import STRATEGIES

    # item 0 settles at once; the others ask 'num' too
    more = lambda i, it, a: [] if i == 0 or len(a) > 1 else ["num"]  # noqa: E731
    staged("two-stages", "geo", more, aggregator)
    try:
        with make(aggregator) as c:
            c.reuse_answers = False  # every batch reaches the pool, as a first one does
            log: list[tuple[str, object]] = []
            run = c.run

            def logged(requests, *args, **kw):
                log.append(("batch", sorted({r.item_id.split("|")[0] for r in requests})))
                return run(requests, *args, **kw)

            c.run = logged
            qs = items("test")[:3]

            def done(i, tr):
                log.append(("done", i))
                c.feedback(tr.id, True)  # its caller may grade it at once: it is known

            heard = c.answer(qs, "two-stages", on_done=done)
            c.run = run
            quiet = c.answer(qs, "two-stages")
    finally:
        STRATEGIES.remove("two-stages")
    ids = [q.id for q in qs]
    assert [(t.choice, [a.expert for a in t.answers]) for t in heard] == [
        (t.choice, [a.expert for a in t.answers]) for t in quiet
    ]
    assert [a.expert for a in heard[0].answers] == ["geo"]
    assert [a.expert for a in heard[1].answers] == ["geo", "num"]
    dones = [i for kind, i in log if kind == "done"]
    assert sorted(dones) == [0, 1, 2]
    second = log.index(("batch", sorted(ids[1:])))  # the stage that asks 'num'
    if aggregator == "vote":
        assert log[:3] == [("batch", sorted(ids)), ("done", 0), ("batch", sorted(ids[1:]))]
    else:  # the synthesis is one more batch, for every item, after the last stage
        assert log.index(("done", 0)) > second + 1
