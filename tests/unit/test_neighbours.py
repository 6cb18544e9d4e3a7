"""The second witness: embedded validation questions with each expert's outcome, the blend
with the keywords learnt by leave-one-out, and learning from graded answers after
profiling (the facade, and the gateway's feedback over real HTTP)."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.errors import ConfigError
from orchestrator.profiling import choose_skills
from skills.estimates import calibrate, estimate, routing_accuracy
from skills.neighbours import RIGHT, UNKNOWN, WRONG, QuestionIndex
from skills.profiles import ProfileSet
from tests.unit.test_conclave import ROWS, items, make


def _unit(rows: list[list[float]]) -> np.ndarray:
    v = np.asarray(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_evidence_is_the_similarity_weighted_record_on_the_nearest_questions():
    vecs = _unit([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]])
    index = QuestionIndex(
        ["q0", "q1", "q2", "q3"],
        vecs,
        {"x": [RIGHT, RIGHT, WRONG, WRONG], "y": [WRONG, UNKNOWN, RIGHT, RIGHT]},
        "test",
    )
    sims = index.similarities(_unit([[1, 0]]))
    (ev,) = index.evidence(sims, ["x", "y", "z"], k=2)
    s1 = float(vecs[1] @ np.array([1, 0]))
    assert ev["x"] == pytest.approx((1 + s1, 1 + s1))  # right on both neighbours
    assert ev["y"] == pytest.approx((0.0, 1.0))  # q1 ungraded for y: only q0 counts
    assert "z" not in ev  # not in the index: no evidence at all
    # leaving a question out of its own neighbours (calibration)
    (own,) = index.evidence(index.similarities(vecs[:1]), ["x"], k=1, exclude=[0])
    assert own["x"] == pytest.approx((s1, s1))
    # an opposite question counts for nothing, however many neighbours are read
    (far,) = index.evidence(sims, ["y"], k=4)
    assert far["y"] == pytest.approx((0.0, 1.0))


def test_the_index_learns_new_questions_and_round_trips_atomically(tmp_path):
    index = QuestionIndex(["q0"], _unit([[1, 0]]), {"x": [RIGHT]}, "test")
    index.add("q1", _unit([[0, 1]])[0], {"x": False, "new": True})
    assert index.ids == ["q0", "q1"] and len(index.vectors) == 2
    assert index.outcomes["x"].tolist() == [RIGHT, WRONG]
    assert index.outcomes["new"].tolist() == [UNKNOWN, RIGHT]
    index.save(tmp_path / "q")
    back = QuestionIndex.load(tmp_path / "q", "test")
    assert back.ids == index.ids and np.allclose(back.vectors, index.vectors)
    assert {e: c.tolist() for e, c in back.outcomes.items()} == {
        e: c.tolist() for e, c in index.outcomes.items()
    }
    with pytest.raises(ConfigError, match="embedded with 'test'"):
        QuestionIndex.load(tmp_path / "q", "other")
    raw = (tmp_path / "q" / "vectors.npy").read_bytes()
    (tmp_path / "q" / "vectors.npy").write_bytes(raw[:-4] + b"\0\0\0\1")
    with pytest.raises(ConfigError, match="damaged; profile again"):
        QuestionIndex.load(tmp_path / "q", "test")
    with pytest.raises(ConfigError, match="unreadable"):
        QuestionIndex.load(tmp_path / "missing", "test")
    assert not list((tmp_path / "q").glob("*.tmp*"))  # nothing half-written left


def _world(
    seed: int,
    keyword_error: float,
    neighbours_informative: bool,
    good: float = 0.9,
    bad: float = 0.2,
):
    """Two topics, two experts (`good` on their own topic, `bad` on the other: specialists,
    or alike when equal); each question's keyword names its topic except a share
    `keyword_error` of questions, which name the other one; its embedding lies near its
    topic's axis (or anywhere)."""
    rng = np.random.default_rng(seed)
    n = 160
    topic = rng.integers(0, 2, n)
    lie = rng.random(n) < keyword_error
    keywords = [[["algebra", "history"][t ^ int(bad)]] for t, bad in zip(topic, lie, strict=True)]
    if neighbours_informative:
        vecs = np.eye(2)[topic] * 3 + rng.normal(0, 1, (n, 2))
    else:
        vecs = rng.normal(0, 1, (n, 2))
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    right = {
        "x": rng.random(n) < np.where(topic == 0, good, bad),
        "y": rng.random(n) < np.where(topic == 1, good, bad),
    }
    profiles = ProfileSet().update(
        ((e, keywords[i], bool(ok[i])) for e, ok in right.items() for i in range(n)),
        dataset="d",
        split="v",
    )
    index = QuestionIndex(
        [f"q{i}" for i in range(n)],
        vecs,
        {e: [RIGHT if ok else WRONG for ok in col] for e, col in right.items()},
        "test",
    )
    sims = index.similarities(index.vectors)
    near = {k: index.evidence(sims, ["x", "y"], k, exclude=list(range(n))) for k in (5, 20)}
    outcomes = {e: [bool(v) for v in col] for e, col in right.items()}
    return profiles.profiles, keywords, outcomes, near


def test_calibration_leans_on_the_neighbours_only_where_keywords_mislead():
    # keywords that name the wrong topic for 40% of questions: the neighbours win
    cal = calibrate(*_world(0, 0.4, neighbours_informative=True))
    assert cal.blend >= 0.5 and cal.neighbours in (5, 20)
    key = f"w={cal.blend:g} k={cal.neighbours} prior={cal.prior_strength:g}"
    assert cal.scores[key] == min(cal.scores.values())
    assert cal.scores[key] < cal.scores[f"w=0 k=5 prior={cal.prior_strength:g}"]
    # sound keywords and neighbours that say nothing: the keywords alone
    cal = calibrate(*_world(1, 0.0, neighbours_informative=False))
    assert cal.blend == 0.0
    # a fixed prior strength is the only one tried
    assert {k.split()[-1] for k in calibrate(*_world(1, 0.0, False), priors=(4.0,)).scores} == {
        "prior=4"
    }


def test_calibration_shrinks_experts_alike_everywhere_hard_and_specialists_little():
    alike = calibrate(*_world(3, 0.0, neighbours_informative=False, good=0.6, bad=0.6))
    specialists = calibrate(*_world(3, 0.0, neighbours_informative=False))
    assert alike.prior_strength == 64.0 and specialists.prior_strength <= 4.0


def test_each_expert_has_its_own_prior_strength_so_a_one_subject_specialist_beats_a_generalist():
    """Fourteen subjects of four keywords each, questions naming two or three of theirs: a
    generalist at 0.69 everywhere, a specialist at 0.86 on one subject and 0.26 elsewhere,
    another generalist, and one a little better on half the subjects. One prior strength
    for the pool (what the pool as a whole wants) pulled the specialist's record on its
    subject toward its overall 0.30, below the generalist; each its own keeps the
    generalist shrunk and the specialist not."""
    rng = np.random.default_rng(0)
    words = [[f"s{t}w{j}" for j in range(4)] for t in range(14)]
    topic = rng.integers(0, 14, 350)
    keywords = [list(rng.choice(words[t], rng.integers(2, 4), replace=False)) for t in topic]
    level = {
        "gen": lambda t: 0.69,
        "one": lambda t: 0.86 if t == 0 else 0.26,
        "gen2": lambda t: 0.6,
        "wide": lambda t: 0.6 if t < 7 else 0.45,
    }
    outcomes = {e: [bool(rng.random() < f(t)) for t in topic] for e, f in level.items()}
    profiles = (
        ProfileSet()
        .update(
            ((e, keywords[i], ok[i]) for e, ok in outcomes.items() for i in range(len(topic))),
            dataset="d",
            split="v",
        )
        .profiles
    )
    cal = calibrate(profiles, keywords, outcomes, {5: [{} for _ in topic]})
    assert cal.priors["gen"] == 64.0 and cal.priors["one"] <= 4.0 < cal.prior_strength == 16.0
    # each at its own strength predicts the validation answers better than all at one
    own = cal.scores[f"w={cal.blend:g} k={cal.neighbours} prior=each"]
    assert own < cal.scores[f"w={cal.blend:g} k={cal.neighbours} prior={cal.prior_strength:g}"]
    subject = words[0][:3]
    assert (
        estimate("one", profiles["one"], subject, cal.prior_of("one")).accuracy
        > estimate("gen", profiles["gen"], subject, cal.prior_of("gen")).accuracy
    )
    # at the pool's one strength the generalist came first on the specialist's subject
    assert (
        estimate("one", profiles["one"], subject, cal.prior_strength).accuracy
        < estimate("gen", profiles["gen"], subject, cal.prior_strength).accuracy
    )


def test_a_blended_estimate_moves_towards_the_neighbours_record():
    profiles, keywords, _, near = _world(2, 0.4, neighbours_informative=True)
    x = profiles["x"]
    kw_only = estimate("x", x, ["algebra"])
    trusted = estimate("x", x, ["algebra"], near=(0.0, 20.0), blend=1.0)  # 0 of 20 nearby
    half = estimate("x", x, ["algebra"], near=(0.0, 20.0), blend=0.5)
    assert trusted.accuracy < half.accuracy < kw_only.accuracy
    assert half.accuracy == pytest.approx((trusted.accuracy + kw_only.accuracy) / 2)
    assert estimate("x", x, ["algebra"], near=None, blend=1.0) == kw_only


def test_feedback_and_graded_answers_update_the_estimates_and_are_saved(tmp_path):
    from orchestrator.profiling import ensure_profile

    with make(aggregator="vote") as c:
        folder, reused = ensure_profile(c, items("validation"), "skillmix", tmp_path)
        assert not reused and c.state_dir == folder
        before = len(c.questions)
        test = items("test")[:2]
        traces = c.answer(test, "conclave")
        asked = traces[0].answers[0].expert
        right_before = c.profiles.profiles[asked].overall()
        # the user says the first answer was wrong and gives the right one
        gold = "Z"
        assert c.feedback(traces[0].id, correct=False, gold=gold) == len(
            {a.expert for a in traces[0].answers}
        )
        prof = c.profiles.profiles[asked]
        assert prof.provenance[-1].split == "feedback"
        assert prof.overall() == (right_before[0], right_before[1] + 1)
        assert len(c.questions) == before + 1
        assert c.questions.outcomes[asked][-1] == WRONG
        with pytest.raises(KeyError):
            c.feedback("no-such-answer", correct=True)
        # graded answers from a caller with gold: every expert asked is graded
        learnt = c.learn(test[1:], traces[1:])
        assert (
            learnt == len({a.expert for a in traces[1].answers}) and len(c.questions) == before + 2
        )
    # what it learnt is in the profile folder: a new facade starts from it
    with make(aggregator="vote") as again:
        again.load_state(folder)
        assert len(again.questions) == before + 2
        assert again.profiles.profiles[asked].provenance[-2].split == "feedback"


def _three(keywords: list[list[str]]) -> tuple[np.ndarray, QuestionIndex]:
    """Three questions, the first two alike, with these keywords."""
    vecs = _unit([[1, 0], [0.9, 0.1], [0, 1]])
    return vecs, QuestionIndex(
        ["q0", "q1", "q2"], vecs, {"x": [RIGHT, RIGHT, WRONG]}, "test", keywords=keywords
    )


def test_skills_near_are_the_neighbours_keywords_weighted_by_similarity():
    vecs, index = _three([["algebra", "math"], ["algebra", "proofs"], ["history", "dates"]])
    (near,) = index.skills_near(index.similarities(_unit([[1, 0.05]])), k=2)
    assert near == ["algebra", "math"]  # both neighbours say algebra; q0 is the closer
    (far,) = index.skills_near(index.similarities(_unit([[0, 1]])), k=1)
    assert sorted(far) == ["dates", "history"]  # equal weight: both, in name order
    with pytest.raises(ValueError, match="keyword lists"):
        QuestionIndex(["q0"], vecs[:1], {}, "test", keywords=[])


def test_the_embedding_path_routes_without_the_keyword_model_and_the_same_way_each_time():
    with make(aggregator="vote") as c:
        c.profile(items("validation"), dataset="skillmix")
        routing = c.config.routing.model_copy(update={"skills": "embedding"})
        c.config = c.config.model_copy(update={"routing": routing})
        test = items("test")
        fast = c.skills_of(test, source="embedding")
        slow = c.skills_of(test)
        assert all(calls == 0 for _, _, calls, _ in fast)
        # the neighbours name the skill the keyword model names for each question
        agree = sum(f[1][0] == s[1][0] for f, s in zip(fast, slow, strict=True))
        assert agree == len(test)
        traces = c.answer(test, "conclave")
        again = c.answer(list(reversed(test)), "conclave")
    assert all(t.correct for t in traces)
    assert all(t.calls == len(t.answers) for t in traces)  # no keyword calls
    by_id = {t.id: t for t in again}
    assert all(by_id[t.id].answers == t.answers for t in traces)


def test_skills_near_can_leave_a_question_out_of_its_own_neighbours():
    vecs, index = _three([["math"], ["proofs"], ["history"]])
    sims = index.similarities(vecs)
    assert index.skills_near(sims, k=1) == [["math"], ["proofs"], ["history"]]
    # leaving each out, the nearest other question speaks for it
    assert index.skills_near(sims, k=1, exclude=[0, 1, 2]) == [["proofs"], ["math"], ["proofs"]]


def test_routing_accuracy_scores_the_expert_ranked_first_and_splits_ties():
    outcomes = {"a": [True, False, True], "b": [False, True, False]}
    ranked = [{"a": 0.9, "b": 0.1}, {"a": 0.2, "b": 0.8}, {"a": 0.5, "b": 0.5}]
    # right, right, and a tie between a right and a wrong expert: half
    assert routing_accuracy(ranked, outcomes) == pytest.approx(100 * 2.5 / 3)
    source, scores = choose_skills(ranked, [{"a": 0.1, "b": 0.9}] * 3, outcomes)
    assert (source, scores["embedding"]) == ("keywords", pytest.approx(33.33, abs=0.01))
    # as good (or within the tolerance): the path without an LLM call wins, once there
    # are questions enough to tell
    assert choose_skills(ranked, ranked, outcomes)[0] == "keywords"
    many = {e: col * 10 for e, col in outcomes.items()}
    assert choose_skills(ranked * 10, ranked * 10, many)[0] == "embedding"
    assert routing_accuracy([], outcomes) == 0.0


class _Scrambled:
    """An embedder whose neighbours mean nothing: each text a random unit vector of its
    own (the same for the same text, so the skill inventory still maps a keyword to
    itself)."""

    name = "scrambled"

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = []
        for t in texts:
            rng = np.random.default_rng(int.from_bytes(t.encode()[:8].ljust(8, b"\0")) + len(t))
            rows.append(rng.normal(size=64))
        return _unit(rows)


class _BySubject(_Scrambled):
    """An embedder whose neighbours are always right: a question's vector is its subject's
    (plus a little of its own), so its nearest questions share its keywords."""

    name = "by-subject"

    def encode(self, texts: list[str]) -> np.ndarray:
        subject = {q.question: q.category for q in ROWS.values()}
        own = super().encode(texts)
        cats = sorted(set(subject.values()))
        rows = [
            np.eye(len(cats))[cats.index(subject[t])] if t in subject else np.zeros(len(cats))
            for t in texts
        ]
        return _unit(np.hstack([np.asarray(rows) * 4.0, own]).tolist())


@pytest.mark.parametrize(
    ("embedder", "expected"), [(_BySubject, "embedding"), (_Scrambled, "keywords")]
)
def test_auto_skills_take_the_embedding_only_where_its_neighbours_route_as_well(embedder, expected):
    with make(aggregator="vote") as c:
        c._embedder = embedder()
        st = c.profile(items("validation"), dataset="skillmix")
        assert st.skills_source == expected
        assert set(st.skills_scores) == {"keywords", "embedding"}
        assert c.config.routing.skills == "auto"
        assert c.skills_source() == expected
        (plan,) = c.plan(items("test")[:1])
        assert plan.explanation.skills_from == expected
        if expected == "embedding":  # read from the neighbours: the keyword model not asked
            assert st.skills_scores["embedding"] >= st.skills_scores["keywords"] - 1
        else:
            assert st.skills_scores["embedding"] < st.skills_scores["keywords"] - 1
        # a config that names a source is obeyed whatever profiling found
        fixed = c.config.routing.model_copy(update={"skills": "keywords"})
        c.config = c.config.model_copy(update={"routing": fixed})
        assert c.skills_source() == "keywords"
