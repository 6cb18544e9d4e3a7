"""The facade on skill-aware fake experts: profiling, recruitment, strategies, traces."""

from __future__ import annotations

import random

import pytest

from evals.skillmix import generate
from orchestrator.answers import options_of
from orchestrator.conclave import Conclave
from orchestrator.config import ConclaveConfig, ExpertConfig, parse_config
from orchestrator.errors import ConfigError
from orchestrator.types import Item
from skills.inventory import NgramEmbedder
from workers.backend import ExpertBackend
from workers.batch import GenerationRequest, GenerationResult
from workers.pool import ExpertPool

CATS = ("geography", "arithmetic", "dates")
ROWS = {q.question: q for s in ("validation", "test") for q in generate(s, 12, categories=CATS)}
KNOWS = {"geo": {"geography"}, "num": {"arithmetic"}, "cal": {"dates"}, "dud": set()}


class SkillFake(ExpertBackend):
    """Right on its own categories, wrong elsewhere; the keyword model names the category."""

    def __init__(self, config: ExpertConfig, service: ConclaveConfig) -> None:
        super().__init__(config, service)
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        self._loaded = True

    def unload(self) -> None:
        self._loaded = False

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return [self._one(r) for r in requests]

    def _one(self, r: GenerationRequest) -> GenerationResult:
        text = r.prompt_text()
        q = next(q for t, q in ROWS.items() if t in text)
        if self.name == "kw":
            out = f"Keywords: {q.category}, {q.category} skill"
        elif self.name == "agg":  # trusts the first listed answer
            first = text.split("1. ", 1)[1].split("\n", 1)[0]
            out = first
        else:
            right = q.category in KNOWS[self.name]
            letter = q.gold_answer if right else "ABCD"[("ABCD".index(q.gold_answer) + 1) % 4]
            out = f"The answer is {options_of(q.question)[letter]}."
        return GenerationResult(
            item_id=r.item_id, expert=self.name, text=out, prompt_tokens=10, completion_tokens=5
        )


class DownFake(SkillFake):
    """An expert whose provider is down: every call fails."""

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        raise RuntimeError("provider down (503)")


def make(aggregator: str = "auto", down: str | None = None) -> Conclave:
    experts = [{"name": n, "backend": {"type": "fake"}} for n in KNOWS]
    experts += [
        {"name": "kw", "backend": {"type": "fake"}, "roles": ["keywords"]},
        {"name": "agg", "backend": {"type": "fake"}, "roles": ["aggregator"]},
    ]
    config = parse_config(
        {
            "pool": {"experts": experts},
            "routing": {"aggregator": aggregator, "keywords": {"samples": 2}},
        }
    )
    pool = ExpertPool(
        config,
        backends={
            e.name: (DownFake if e.name == down else SkillFake)(e, config)
            for e in config.pool.experts
        },
    )
    return Conclave(config, pool=pool, embedder=NgramEmbedder())


def items(split: str) -> list[Item]:
    return [Item(**q.model_dump()) for q in ROWS.values() if f"-{split}-" in q.id]


def test_an_expert_down_while_profiled_is_not_cached_as_wrong(tmp_path):
    """Its errors count as wrong answers for this run, so the router seldom asks it; a
    cached profile would keep that after it is back, until the pool changes."""
    from orchestrator.profiling import ensure_profile

    val = items("validation")
    events: list[str] = []
    with make(down="geo") as c:
        folder, reused = ensure_profile(c, val, "skillmix", tmp_path, on_event=events.append)
        assert c.state is not None and c.state.accuracy["geo"] == 0.0
        lost = c.state.lost
    assert folder is None and not reused and list((tmp_path / "profiles").iterdir()) == []
    assert list(lost) == ["geo"] and (lost["geo"].lost, lost["geo"].calls) == (len(val),) * 2
    assert "provider down (503)" in lost["geo"].first
    assert f"geo lost {len(val)} of {len(val)} calls to errors" in events[-2]
    assert events[-1].startswith("profile NOT cached: geo lost more than 5%")
    with make() as c:  # back up: profiled and cached, with no loss
        folder, reused = ensure_profile(c, val, "skillmix", tmp_path)
        assert folder is not None and (folder / "routing.json").exists()
        assert c.state is not None and c.state.lost == {} and c.state.accuracy["geo"] > 0


def test_a_cache_it_cannot_write_is_an_error_before_profiling(tmp_path):
    """Had been an OSError's traceback after the profiling's minutes."""
    from orchestrator.errors import ConfigError
    from orchestrator.profiling import ensure_profile

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with make() as c:
        with pytest.raises(ConfigError, match=r"cache folder .*a-file/profiles: cannot write"):
            ensure_profile(c, items("validation"), "skillmix", blocker)
        assert c.state is None  # nothing was profiled


def test_profile_learns_who_knows_what_and_routes_by_it():
    with make() as c:
        state = c.profile(items("validation"), dataset="skillmix")
        assert state.accuracy == {
            "geo": pytest.approx(33.33),
            "num": pytest.approx(33.33),
            "cal": pytest.approx(33.33),
            "dud": 0.0,
        }
        assert c.profiles.profiles["geo"].skills["geography"] == 12
        assert c.profiles.profiles["geo"].skills["arithmetic"] == -12
        traces = c.answer(items("test"), "symbolic-moe")
        assert all(t.correct for t in traces)
        for t in traces:
            q = ROWS[next(i.question for i in items("test") if i.id == t.id)]
            assert t.keywords[0] == q.category
            assert set(t.routing.chosen) == {next(n for n, k in KNOWS.items() if q.category in k)}
            # 2 keyword samples, 1 distinct expert (drawn k=3 times), 1 aggregator call
            assert t.calls == 4
            # each call reads 10 tokens and writes 5
            assert (t.tokens, t.completion_tokens) == (4 * 15, 4 * 5)
        # the vote and the trusting aggregator both beat one wrong-two-right mixes... the
        # benchmark has one right and two wrong answers: the vote follows the two wrong ones
        assert state.aggregator_scores["vote"] < 50


def test_strategies_compare_as_expected():
    with make(aggregator="vote") as c:
        c.profile(items("validation"), dataset="skillmix")
        test = items("test")
        acc = {
            s: sum(t.correct for t in c.answer(test, s)) / len(test)
            for s in ("best-single", "majority", "moa", "symbolic-moe", "random-k")
        }
        assert acc["symbolic-moe"] == 1.0
        assert acc["best-single"] == pytest.approx(1 / 3)
        assert acc["majority"] < acc["symbolic-moe"]
        single = c.answer(test, "single", expert="dud")
        assert not any(t.correct for t in single) and all(t.calls == 1 for t in single)


def test_bad_requests_say_what_to_do():
    with make() as c:
        with pytest.raises(ConfigError, match="unknown strategy"):
            c.answer(items("test"), "telepathy")
        with pytest.raises(ConfigError, match="run `profile` first"):
            c.answer(items("test"), "best-single")
        with pytest.raises(ConfigError, match="needs graded items"):
            c.profile([Item(id="x", question="Q?")], dataset="d")


def test_reuse_answers_asks_a_greedy_expert_once_per_question():
    c = make()
    c.reuse_answers = True
    calls: list[int] = []
    run = c.pool.run
    c.pool.run = lambda reqs, progress=False, **kw: (
        calls.append(len(reqs)) or run(reqs, progress, **kw)
    )
    its = items("test")[:4]
    first = c.ask([(it, "geo") for it in its])
    again = c.ask([(it, ex) for it in its for ex in ("geo", "num")])
    assert calls == [4, 4]  # only the new (question, expert) pairs went to the pool
    assert not any(a.cached for a in first)
    assert [a.cached for a in again] == [True, False] * 4
    assert [a.text for a in again[::2]] == [a.text for a in first]
    plain = make()  # off by default: the same question is asked again
    plain.ask([(its[0], "geo")])
    assert not plain.ask([(its[0], "geo")])[0].cached


def test_a_sampling_expert_drawn_twice_answers_twice_a_greedy_one_once():
    """The paper's code asks an expert drawn twice for two samples; a greedy expert's
    second sample would be its first, so it is asked once and counts twice."""
    experts = [
        {"name": "geo", "backend": {"type": "fake"}, "sampling": {"temperature": 0.7}},
        {"name": "num", "backend": {"type": "fake"}},
    ]
    config = parse_config(
        {"pool": {"experts": experts}, "routing": {"router": {"k": 6, "seed": 3}}}
    )
    backends = {e.name: SkillFake(e, config) for e in config.pool.experts}
    seen: list[GenerationRequest] = []
    for b in backends.values():
        run = b.generate
        b.generate = lambda reqs, run=run: seen.extend(reqs) or run(reqs)  # type: ignore[method-assign]
    with Conclave(config, pool=ExpertPool(config, backends=backends)) as c:
        traces = c.answer(items("test")[:6], "random-k")
    for t in traces:
        plan = random.Random(f"3|{t.id}").choices(["geo", "num"], k=6)
        asked = [a.expert for a in t.answers]
        assert asked.count("geo") == plan.count("geo")  # one sample per draw
        assert asked.count("num") == min(1, plan.count("num"))  # once, however often drawn
        assert all(a.weight == 1.0 for a in t.answers if a.expert == "geo")
        assert all(a.weight == plan.count("num") for a in t.answers if a.expert == "num")
        assert t.calls == len(t.answers)
    seeds = [r.sampling.seed for r in seen if r.expert == "geo" and r.sampling is not None]
    draws = sum(1 for r in seen if r.expert == "geo")
    assert len(set(seeds)) == len(seeds) == draws - len(traces)  # draw 0 keeps its settings


def test_auto_keeps_the_vote_unless_an_aggregator_llm_beats_it_beyond_chance():
    """The zoo's case on an Intel Xeon: SmolLM2 right on 6 of 34 benchmark questions, the
    vote on 5: one question is chance, and as Symbolic-MoE's aggregator it cost 60 points
    end to end. An LLM right where the vote is wrong on 8 questions and the other way on
    none is not chance."""
    from orchestrator.profiling import choose_aggregator

    vote = [True] * 5 + [False] * 29
    llm = [False] * 5 + [True] * 6 + [False] * 23
    assert sum(llm) > sum(vote) and choose_aggregator({"vote": vote, "smollm2": llm}) == "vote"
    clear = [True] * 5 + [True] * 8 + [False] * 21
    assert choose_aggregator({"vote": vote, "a": llm, "b": clear}) == "b"
    assert choose_aggregator({"vote": vote}) == "vote"
    assert choose_aggregator({"vote": []}) == "vote"  # no benchmark question at all
