"""`conclave bench pool`: grouped, load-once scheduling against loading per request.

Runs Q questions x k experts each over M tiny models (built on first use) through the
pool's grouped scheduling, then a second batch over the same (now resident) experts, then
a naive baseline that loads the expert's model for every request. The baseline is timed
on a sample of requests and extrapolated per request to the whole batch (the output says
so); both run in the same process on the same Ray cluster.
"""

from __future__ import annotations

import platform
import random
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.zoo.tiny import TINY_ENGINE_ARGS, build_tiny_model
from orchestrator.config import ConclaveConfig, default_cache_dir, parse_config
from workers.batch import GenerationRequest
from workers.pool import ExpertPool


class GroupedTiming(BaseModel):
    """The pool's grouped, load-once scheduling: a first batch, then the same again."""

    model_config = ConfigDict(extra="forbid")

    wall_s: float = Field(..., description="First batch, models loaded on demand.")
    model_loads: int
    second_batch_wall_s: float = Field(..., description="The same batch, models resident.")
    second_batch_model_loads: int


class NaiveTiming(BaseModel):
    """The baseline that loads the expert's model for every request, timed on a sample."""

    model_config = ConfigDict(extra="forbid")

    sampled_requests: int
    sample_wall_s: float
    per_request_s: float
    model_loads_in_sample: int
    extrapolated_wall_s: float = Field(..., description="per_request_s x all requests.")
    note: str


class PoolBenchResult(BaseModel):
    """`conclave bench pool`: what ran, both timings, and the speedup of grouping."""

    model_config = ConfigDict(extra="forbid")

    benchmark: Literal["pool"] = "pool"
    questions: int
    experts_per_question: int
    requests: int
    models: int
    distinct_experts: int
    grouped: GroupedTiming
    naive: NaiveTiming
    speedup: float = Field(..., description="Extrapolated naive wall time / grouped wall time.")
    failed_requests: int
    machine: str


TOPICS = ["arithmetic", "dates", "units", "chemistry", "geography", "strings", "law", "history"]


def tiny_pool_config(model_dirs: list[Path], num_cpus: int | None = None) -> ConclaveConfig:
    return parse_config(
        {
            "cluster": {"num_cpus": num_cpus, "dashboard": False},
            "pool": {
                "experts": [
                    {
                        "name": f"tiny-{i}",
                        "backend": {
                            "type": "vllm",
                            "model": str(d),
                            "engine_args": TINY_ENGINE_ARGS,
                        },
                        "sampling": {"max_tokens": 16, "temperature": 0.0},
                        "resources": {"num_cpus": 0.25, "memory_gb": 1.0},
                    }
                    for i, d in enumerate(model_dirs)
                ],
                "max_parallel_groups": 2,
            },
        }
    )


def build_tiny_zoo(n_models: int, cache_dir: Path | None = None) -> list[Path]:
    """n tiny models: Llama-style, and a Mixtral-style MoE as the last one when n > 1."""
    root = (cache_dir or default_cache_dir()) / "tiny"
    return [
        build_tiny_model(
            root / f"tiny-{i}",
            seed=i,
            arch="mixtral" if (n_models > 1 and i == n_models - 1) else "llama",
        )
        for i in range(n_models)
    ]


def make_requests(
    questions: int, per_question: int, experts: list[str], seed: int
) -> list[GenerationRequest]:
    rng = random.Random(seed)
    reqs = []
    for q in range(questions):
        topic = rng.choice(TOPICS)
        text = f"Question {q} ({topic}): what is {rng.randint(2, 99)} plus {rng.randint(2, 99)}?"
        for e in rng.sample(experts, per_question):
            reqs.append(
                GenerationRequest(
                    item_id=f"q{q}:{e}", expert=e, messages=[{"role": "user", "content": text}]
                )
            )
    return reqs


def run_pool_bench(
    questions: int = 200,
    per_question: int = 3,
    models: int = 5,
    naive_sample: int = 20,
    seed: int = 0,
    progress: bool = True,
    cache_dir: Path | None = None,
) -> PoolBenchResult:
    """Q questions x k experts over `models` tiny models: grouped twice, then the naive
    baseline on `naive_sample` requests (see the module docstring)."""
    if per_question > models:
        raise ValueError(f"--per-question ({per_question}) cannot exceed --models ({models})")
    if naive_sample < 1:
        raise ValueError("--naive-sample must be at least 1")
    dirs = build_tiny_zoo(models, cache_dir)
    config = tiny_pool_config(dirs)
    names = [e.name for e in config.pool.experts]
    reqs = make_requests(questions, per_question, names, seed)

    with ExpertPool(config) as pool:
        t0 = time.perf_counter()
        results = pool.run(reqs, progress=progress)
        grouped_s = time.perf_counter() - t0
        grouped_loads = pool.stats.loads
        failed = [r for r in results if not r.ok]

        t0 = time.perf_counter()
        again = pool.run(reqs, progress=progress)
        second_s = time.perf_counter() - t0
        second_loads = pool.stats.loads - grouped_loads
        failed += [r for r in again if not r.ok]

        pool.unload_all()
        sample = random.Random(seed + 1).sample(reqs, min(naive_sample, len(reqs)))
        loads_before = pool.stats.loads
        t0 = time.perf_counter()
        for req in sample:
            failed += [r for r in pool.run([req], progress=False) if not r.ok]
            pool.unload_all()
        naive_sample_s = time.perf_counter() - t0
        naive_loads = pool.stats.loads - loads_before

    per_request = naive_sample_s / len(sample)
    naive_total = per_request * len(reqs)
    return PoolBenchResult(
        questions=questions,
        experts_per_question=per_question,
        requests=len(reqs),
        models=models,
        distinct_experts=len({r.expert for r in reqs}),
        grouped=GroupedTiming(
            wall_s=round(grouped_s, 2),
            model_loads=grouped_loads,
            second_batch_wall_s=round(second_s, 2),
            second_batch_model_loads=second_loads,
        ),
        naive=NaiveTiming(
            sampled_requests=len(sample),
            sample_wall_s=round(naive_sample_s, 2),
            per_request_s=round(per_request, 3),
            model_loads_in_sample=naive_loads,
            extrapolated_wall_s=round(naive_total, 1),
            note=f"timed on {len(sample)} requests, extrapolated per request to {len(reqs)}",
        ),
        speedup=round(naive_total / grouped_s, 1),
        failed_requests=len(failed),
        machine=f"{platform.machine()}, {_cpus()} CPUs, {platform.python_version()}, vLLM CPU "
        "in-process engines in Ray actors",
    )


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
