from __future__ import annotations

import itertools

from agents.aggregators import weighted_vote


def _q(i: int) -> str:
    return f"Question {i}? The options are: (A) w (B) x (C) y (D) z"


def test_the_heaviest_answer_wins_whatever_the_order():
    answers = ["The answer is (A).", "The answer is (B).", "The answer is (B).", "no idea"]
    for perm in itertools.permutations(answers):
        assert weighted_vote(_q(0), list(perm)) == "B"
    # weights count: one expert drawn three times outweighs two drawn once
    assert weighted_vote(_q(0), answers[:3], [3.0, 1.0, 1.0]) == "A"
    assert weighted_vote(_q(0), ["no idea", None]) is None


def test_a_tie_does_not_depend_on_the_order_of_the_answers_and_is_a_fair_coin():
    tied = ["The answer is (A).", "The answer is (C).", "The answer is (C).", "The answer is (A)."]
    picks = []
    for i in range(200):
        got = {weighted_vote(_q(i), list(p)) for p in itertools.permutations(tied)}
        assert len(got) == 1, f"question {i}: the order of the answers decided the tie: {got}"
        picks.append(got.pop())
    assert set(picks) == {"A", "C"}
    assert 60 < picks.count("A") < 140  # not the first answer's, not always the same letter


def test_the_weighted_vote_trusts_experts_by_their_validation_accuracy():
    from agents.aggregators import AGGREGATORS, AggregationContext
    from orchestrator.types import ExpertAnswer, Item

    item = Item(id="q", question="Pick one. The options are: (A) x (B) y")
    answers = [
        ExpertAnswer(expert="sharp", text="The answer is (A)."),
        ExpertAnswer(expert="dull1", text="The answer is (B)."),
        ExpertAnswer(expert="dull2", text="The answer is (B)."),
    ]
    ctx = AggregationContext(ask=lambda reqs: [], accuracy={"sharp": 90, "dull1": 20, "dull2": 25})
    (plain,) = AGGREGATORS.get("vote").combine([item], [answers], ctx)
    (weighted,) = AGGREGATORS.get("weighted-vote").combine([item], [answers], ctx)
    assert plain.choice == "B" and weighted.choice == "A"
    # without a record every expert weighs the same, as in the plain vote
    (blind,) = AGGREGATORS.get("weighted-vote").combine(
        [item], [answers], AggregationContext(ask=lambda reqs: [])
    )
    assert blind.choice == "B"
