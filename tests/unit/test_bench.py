"""The product's benchmarks (`evals.bench`): typed results whose JSON keeps the keys the
README documents, and a package that imports nothing heavy until a benchmark runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from evals.bench import run_pool_bench, run_routing_bench
from evals.bench.gateway import GatewayBenchResult, Overhead, VLLMComparison
from evals.bench.loopback import LevelStats
from skills.inventory import NgramEmbedder


def test_routing_bench_returns_its_figures_under_the_documented_keys():
    res = run_routing_bench(questions=50, experts=3, cold_questions=5, embedder=NgramEmbedder())
    data = res.model_dump(mode="json")
    assert list(data) == [
        "experts",
        "inventory_keywords",
        "inventory_build_s",
        "warm",
        "cold",
        "embedder",
    ]
    assert list(data["warm"]) == ["questions", "seconds", "questions_per_s"]
    assert list(data["cold"]) == ["questions", "new_keywords", "seconds", "questions_per_s"]
    assert data["experts"] == 3 and data["inventory_keywords"] == 180
    assert data["warm"]["questions"] == 50 and data["cold"]["new_keywords"] == 15
    assert data["embedder"] == "ngram-hash-256" and res.warm.questions_per_s > 0


def _level(c: int) -> LevelStats:
    return LevelStats(
        concurrency=c,
        requests=8,
        errors=0,
        p50_ms=1.0,
        p90_ms=2.0,
        p99_ms=float("nan"),
        requests_per_s=100.0,
    )


def test_gateway_result_leaves_out_the_vllm_comparison_when_it_did_not_run():
    res = GatewayBenchResult(
        machine="box",
        batch_window_ms=5.0,
        fake_expert=[_level(1)],
        fake_peak_requests_per_s=100.0,
    )
    data = res.model_dump(mode="json")
    assert list(data) == ["machine", "batch_window_ms", "fake_expert", "fake_peak_requests_per_s"]
    assert list(data["fake_expert"][0]) == [
        "concurrency",
        "requests",
        "errors",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "requests_per_s",
    ]
    res.vllm = VLLMComparison(
        model="m",
        max_tokens=16,
        engine="in the actor's process",
        vllm_server=[_level(1)],
        gateway_passthrough=[_level(1)],
    )
    res.passthrough_overhead_pct = {"1": Overhead(p50=1.0, p90=2.0, p99=3.0)}
    data = res.model_dump(mode="json")
    assert list(data)[-2:] == ["vllm", "passthrough_overhead_pct"]
    assert list(data["vllm"]) == [
        "model",
        "max_tokens",
        "engine",
        "vllm_server",
        "gateway_passthrough",
    ]
    assert data["passthrough_overhead_pct"] == {"1": {"p50": 1.0, "p90": 2.0, "p99": 3.0}}


def test_pool_bench_refuses_bad_sizes_before_building_models(tmp_path):
    with pytest.raises(ValueError, match="cannot exceed --models"):
        run_pool_bench(per_question=4, models=3, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="at least 1"):
        run_pool_bench(naive_sample=0, cache_dir=tmp_path)
    assert not (tmp_path / "tiny").exists()


def test_importing_the_benchmarks_is_light():
    code = (
        "import sys; import evals.bench as b;"
        "fs = [b.run_pool_bench, b.run_routing_bench, b.run_gateway_bench,"
        " b.run_free_agents_bench, b.PoolBenchResult, b.FreeAgentsBenchResult];"
        "heavy = ('torch', 'vllm', 'ray', 'litellm', 'transformers', 'matplotlib');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
