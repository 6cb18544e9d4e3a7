"""`conclave bench routing` (`evals.bench.pools`): the smallest pool end to end, through
the scripted OpenAI-compatible server, litellm's remote backend and `conclave eval`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from evals.bench.pools import POOLS, SHARED_DATA, run_pools_bench
from evals.bench.scripted import Script
from orchestrator.cli import app
from orchestrator.formats import load_file
from orchestrator.prompts import messages_for

needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "MMLU_Pro_test.json").is_file(), reason=f"no shared data in {SHARED_DATA}"
)


@needs_data
def test_smoke_pool_end_to_end(tmp_path):
    res = run_pools_bench(
        ["smoke"],
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
