"""`conclave bench routing` (`evals.bench.pools`): the smallest pool end to end, through
the scripted OpenAI-compatible server, litellm's remote backend and `conclave eval`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evals.bench.free_agents_pools import POOLS as FREE_AGENT_POOLS
from evals.bench.free_agents_pools import HeteroPool, inject_fault
from evals.bench.pools import POOLS, SHARED_DATA, run_pools_bench
from evals.bench.scripted import CATEGORIES, Script, ScriptedPool, load_spec
from orchestrator.cli import app
from orchestrator.errors import ConfigError
from orchestrator.formats import load_file
from orchestrator.prompts import messages_for

needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "MMLU_Pro_test.json").is_file(), reason=f"no shared data in {SHARED_DATA}"
)


DOCS = Path(__file__).resolve().parents[2] / "docs" / "pools"


@needs_data
def test_smoke_pool_end_to_end(tmp_path):
    """The smoke pool, given as a file as a user brings one (`--pool-file`)."""
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(POOLS["smoke"].model_dump()))
    res = run_pools_bench(
        [load_spec(tmp_path / "smoke.yaml", ScriptedPool)],
        seeds=1,
        per_category=2,
        out=tmp_path / "pools.json",
        progress=False,
        embedder="ngram",
    )
    assert res.test_questions == 28 and res.profile_questions == 350
    assert {"symbolic-moe", "best-single", "majority", "moa", "random-k"} <= set(res.strategies)
    (pool,) = res.pools
    (run,) = pool.runs
    rows = {r.strategy: r for r in pool.strategies}
    assert list(rows) == res.strategies

    # the server answers as scripted: validation accuracy (350 questions, profiled through
    # the remote backend and graded by the harness) is near each expert's configured one
    for name, want in pool.expected_validation_accuracy.items():
        assert abs(run.validation_accuracy[name] - want) < 9, (name, run.validation_accuracy)
    # specialists at 0.9 on their categories: the oracle finds them, the generalist cannot
    assert pool.oracle.mean >= 80 > pool.singles["generalist"]
    assert pool.expected_oracle == 90.0  # a 0.9 specialist for every category
    # the flaky model's HTTP 500s came back as failed answers, not a crashed run
    assert run.failed_answers > 0 and pool.singles["flaky"] < pool.singles["generalist"]

    assert rows["majority"].expert_calls_per_question == 4
    assert rows["moa"].calls_per_question == 5  # four experts + the aggregator
    assert rows["best-single"].expert_calls_per_question == 1
    assert rows["symbolic-moe"].expert_calls_per_question < 2  # routed to a specialist
    assert pool.majority.mean == rows["majority"].accuracy.mean
    assert pool.reference.mean == max(pool.oracle.mean, pool.majority.mean)
    for r in pool.strategies:
        assert r.gap.mean == pytest.approx(r.accuracy.mean - pool.reference.mean, abs=0.02)
    if "conclave" in rows:  # the product's routed strategy finds the specialists
        assert rows["conclave"].accuracy.mean > pool.singles["generalist"] + 15
    assert res.chart is not None and (tmp_path / "pools.png").read_bytes()[:4] == b"\x89PNG"


@needs_data
def test_scripted_answers_repeat_when_greedy_and_vary_with_the_sample():
    items = load_file(SHARED_DATA / "MMLU_Pro_train.json")
    script = Script(POOLS["specialists"], items, seed=0)
    item = items[0]
    assert script.find(messages_for(item.question)) == item
    greedy = [script.reply("generalist", item, 0) for _ in range(3)]
    assert len(set(greedy)) == 1
    sampled = {script.reply("generalist", it, s) for it in items[:20] for s in range(5)}
    assert len(sampled) > 2
    words = script.reply("kw", item, 1)
    assert words is not None and words.startswith("Keywords: ")


def test_routing_command_names_the_pools_when_one_is_unknown():
    result = CliRunner().invoke(app, ["bench", "routing", "--pool", "nope"])
    assert result.exit_code == 2
    assert "smoke" in result.output and "specialists" in result.output


@needs_data
def test_holds_bench_asks_a_failing_endpoint_a_few_times_not_every_question():
    """`conclave bench holds` on the smallest setting: with holds off every question
    routed to the failing victim calls it (then the next best answers); with holds on it
    is called until `pool.down_after` failures in a row (and by the rest of the batch
    that made them, asked at once) and planned past after that; the answers are as right
    either way (the next best answers both times)."""
    from evals.bench.holds import run_holds_bench

    res = run_holds_bench(per_category=3, rounds=1, progress=False)
    off, on = res.rounds
    assert (off.holds, on.holds) == (False, True) and res.questions == 42
    assert off.victim_calls > res.down_after and off.planned_past == 0
    assert res.down_after <= on.victim_calls < res.down_after + res.batch
    assert on.planned_past == off.victim_calls - on.victim_calls > 0
    assert abs(on.right - off.right) <= 2
    result = CliRunner().invoke(app, ["bench", "holds", "--help"])
    assert result.exit_code == 0 and "down_hold_s" in result.output


def test_pool_files_load_and_bad_ones_say_which_field_and_what_to_do(tmp_path):
    """The documented examples load; a bad pool file is refused before anything runs, with
    the file, the field and the fix named, by the loader and by both bench commands."""
    assert load_spec(DOCS / "routing.yaml", ScriptedPool).name == "overlapping"
    quartet = load_spec(DOCS / "free-agents.yaml", HeteroPool)
    assert quartet.victim == "life" and quartet.subjects() == {"biology", "chemistry", "health"}
    kept = [load_spec(p, HeteroPool) for p in sorted((DOCS / "random").glob("*.yaml"))]
    assert len(kept) == 6
    assert all(k.subjects() for k in kept)  # (the loader checks victim and free agent)

    good = FREE_AGENT_POOLS["three-specialists"].model_dump()

    def bad(edit, model=HeteroPool):
        data = yaml.safe_load(yaml.safe_dump(good))
        edit(data)
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError) as err:
            load_spec(tmp_path / "bad.yaml", model)
        assert str(tmp_path / "bad.yaml") in str(err.value)
        return str(err.value)

    msg = bad(lambda d: d["pool"]["experts"][0]["accuracy"].update({"maths": 0.9}))
    assert "experts.0.accuracy" in msg and "'maths' is not an MMLU-Pro category" in msg
    assert "math" in msg  # the categories to choose from
    msg = bad(lambda d: d["pool"]["experts"][1]["accuracy"].update({"biology": 1.5}))
    assert "biology: 1.5 is not an accuracy" in msg
    msg = bad(lambda d: d["pool"]["experts"][1].update(name="stem"))
    assert "two experts named 'stem'; rename one" in msg
    msg = bad(lambda d: d["pool"]["experts"][1].update(name="kw"))
    assert "'kw' is the server's own keyword model" in msg
    msg = bad(lambda d: d.update(victim="chemist"))
    assert "victim: 'chemist' is not one of the pool's experts (stem, life" in msg
    msg = bad(lambda d: d.update(free_agent="stem"))
    assert "victim and free_agent name the same expert" in msg
    msg = bad(lambda d: d.update(degraded=-0.1))
    assert "degraded" in msg and "-0.1" in msg
    msg = bad(lambda d: d.update(dropped=0.3))
    assert "dropped: unknown field" in msg
    msg = bad(lambda d: d["pool"].pop("experts"), ScriptedPool)
    assert "invalid ScriptedPool" in msg and "name: required field is missing" in msg
    (tmp_path / "list.yaml").write_text("- stem\n- life\n")
    with pytest.raises(ConfigError, match="a HeteroPool is a mapping, got list"):
        load_spec(tmp_path / "list.yaml", HeteroPool)
    (tmp_path / "broken.yaml").write_text("pool: {name: [\n")
    with pytest.raises(ConfigError, match="not valid YAML or JSON"):
        load_spec(tmp_path / "broken.yaml", HeteroPool)
    with pytest.raises(ConfigError, match="does not exist; give the path of a YAML or JSON file"):
        load_spec(tmp_path / "nope.yaml", HeteroPool)

    # the commands refuse it at once (exit 2), before the facade scenario or any server
    fa = CliRunner().invoke(
        app, ["bench", "free-agents", "--pool-file", str(tmp_path / "bad.yaml")]
    )
    assert fa.exit_code == 2 and "pool.experts: required field is missing" in fa.output
    rt = CliRunner().invoke(app, ["bench", "routing", "--pool-file", str(tmp_path / "list.yaml")])
    assert rt.exit_code == 2 and "a ScriptedPool is a mapping, got list" in rt.output
    (tmp_path / "twice.yaml").write_text(yaml.safe_dump(good))
    twice = CliRunner().invoke(
        app,
        [
            "bench",
            "free-agents",
            "--pool",
            "three-specialists",
            "--pool-file",
            str(tmp_path / "twice.yaml"),
        ],
    )
    assert twice.exit_code == 2 and "two pools named 'three-specialists'" in twice.output


@needs_data
def test_a_generalist_victim_falls_everywhere():
    """A victim with no subjects of its own (a generalist) degrades on every category, and
    the figures follow it there."""
    spec = HeteroPool.model_validate(
        {
            "pool": {
                "name": "gen",
                "description": "a generalist falls",
                "experts": [
                    {"name": "generalist", "default": 0.8},
                    {"name": "stem", "accuracy": {"math": 0.9}, "default": 0.3},
                    {"name": "spare", "default": 0.78},
                ],
            },
            "victim": "generalist",
            "free_agent": "spare",
            "degraded": 0.2,
        }
    )
    assert spec.subjects() == set(CATEGORIES)
    items = load_file(SHARED_DATA / "MMLU_Pro_test.json")[:200]
    script = Script(spec.pool, items, seed=0)
    before = sum(script.right("generalist", it) for it in items)
    inject_fault(script, spec)
    after = sum(script.right("generalist", it) for it in items)
    assert before > 130 and after < 70, (before, after)


def test_random_pools_are_drawn_the_same_per_seed_and_vary_across_seeds():
    """`--pool random-<seed>`: test worlds no one tuned to, each a valid scenario: disjoint
    specialists, a free agent within 7% of the victim on each of its subjects, a fall of
    at least 0.3 below the victim's lowest subject (or to the 0.1 floor)."""
    from evals.bench.free_agents_pools import random_pool, resolve_pools

    pools = [random_pool(s) for s in range(200)]
    assert random_pool(7) == random_pool(7) == resolve_pools(["random-7"])[0]
    shapes = set()
    for p in pools:
        experts = {e.name: e for e in p.pool.experts}
        victim, free = experts[p.victim], experts[p.free_agent]
        specialists = [e for e in p.pool.experts if e.accuracy and e is not free]
        owned = [c for e in specialists for c in e.accuracy]
        assert len(owned) == len(set(owned)) and set(owned) <= set(CATEGORIES)
        assert 2 <= len(specialists) <= 5 and victim in specialists
        assert set(free.accuracy) == set(victim.accuracy)
        for c, a in victim.accuracy.items():
            assert 0.92 * a <= free.accuracy[c] <= a
        assert p.degraded <= max(min(victim.accuracy.values()) - 0.3, 0.1)
        assert p.degraded >= 0.1 and p.subjects() == set(victim.accuracy)
        shapes.add((len(specialists), len(victim.accuracy), p.errors > 0))
    assert len(shapes) > 20  # pool sizes, victims' breadth and faults all vary
    assert 0.2 < sum(p.errors > 0 for p in pools) / len(pools) < 0.5
    with pytest.raises(ConfigError, match=r"unknown pool 'random-x'.*random-<seed>"):
        resolve_pools(["random-x"])


def test_random_routing_pools_mix_the_situations_the_named_pools_isolate():
    """`bench routing --pool random-<seed>`: the same pool per seed, valid, and across
    seeds every mix: overlapping specialists, generalists that vary by subject, faulty
    experts, keyword models wrong per call or per question."""
    from evals.bench.random_pools import drawn, random_routing_pool

    pools = [random_routing_pool(s) for s in range(300)]
    assert random_routing_pool(7) == random_routing_pool(7)
    assert drawn(["random-7"], random_routing_pool)[0] == random_routing_pool(7)
    assert drawn(["specialists", "random-x"], random_routing_pool) == ["specialists", "random-x"]
    overlap = flat_generalist = 0
    for p in pools:
        specialists = [e for e in p.experts if e.name.startswith("s")]
        generalists = [e for e in p.experts if e.name.startswith("g")]
        assert len(p.experts) >= 2 and len(specialists) <= 6 and len(generalists) <= 3
        assert generalists or len(specialists) >= 2
        for e in p.experts:
            assert all(0.02 <= a <= 0.98 for a in [e.default, *e.accuracy.values()])
        owned = [c for e in specialists for c in e.accuracy]
        overlap += len(owned) > len(set(owned))
        flat_generalist += any(len(set(g.accuracy.values())) == 1 for g in generalists)
        assert sum(e.errors > 0 for e in p.experts) <= 1
        assert p.keyword_error_per_question <= (p.keyword_error > 0)

    def share(f):
        return sum(map(f, pools)) / len(pools)

    assert overlap > 50 and flat_generalist == 0
    assert 0.2 < share(lambda p: any(e.errors for e in p.experts)) < 0.4
    assert 0.05 < share(lambda p: p.keyword_error_per_question) < 0.35
    assert 0.3 < share(lambda p: p.keyword_error == 0) < 0.5
    assert share(lambda p: not any(e.name.startswith("g") for e in p.experts)) > 0.05
    with pytest.raises(ConfigError, match=r"unknown pool 'random-x'.*random-<seed>"):
        run_pools_bench(["random-x"], progress=False)


def test_standings_set_the_first_strategy_against_each_other_over_the_pools():
    from evals.bench.pools_report import PoolFigures, Spread, StrategyFigures, standings

    def pool(name, acc, oracle, majority, expected):
        rows = [
            StrategyFigures(
                strategy=s,
                accuracy=Spread.of([a]),
                expert_calls_per_question=1,
                calls_per_question=1,
                gap=Spread.of([a - max(oracle, majority)]),
            )
            for s, a in acc.items()
        ]
        spread = Spread.of
        return PoolFigures(
            pool=name,
            description=name,
            experts=2,
            keyword_error=0.0,
            strategies=rows,
            oracle=spread([oracle]),
            majority=spread([majority]),
            reference=spread([max(oracle, majority)]),
            singles={},
            expected_validation_accuracy={},
            expected_oracle=expected,
            runs=[],
        )

    pools = [
        pool("a", {"conclave": 80, "symbolic-moe": 50, "majority": 80}, 85, 80, 87),
        pool("b", {"conclave": 60, "symbolic-moe": 62, "majority": 55}, 58, 55, 60),
        pool("c", {"conclave": 70, "symbolic-moe": 40, "majority": 71}, 75, 71, 66),
    ]
    got = {s.strategy: s for s in standings(pools, ["conclave", "symbolic-moe", "majority"])}
    assert list(got) == ["symbolic-moe", "majority", "max(oracle, majority)", "oracle (expected)"]
    sym, maj, ref, expected = got.values()
    assert (sym.ahead, sym.level, sym.behind) == (2, 0, 1)
    assert sym.mean_difference == pytest.approx((30 - 2 + 30) / 3, abs=0.01)
    assert (sym.worst_difference, sym.worst_pool) == (-2, "b")
    assert (maj.ahead, maj.level, maj.behind) == (1, 1, 1) and maj.worst_pool == "c"
    assert (ref.ahead, ref.behind, ref.worst_difference, ref.worst_pool) == (1, 2, -5, "a")
    assert expected.worst_difference == -7 and expected.worst_pool == "a"
    assert standings(pools[:1], ["conclave", "majority"]) == []
    assert standings(pools, ["conclave"]) == []
