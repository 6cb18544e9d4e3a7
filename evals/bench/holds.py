"""`conclave bench holds`: routed questions while one expert's endpoint fails every call,
with the pool's holds off and on (`workers/backoff.py`, `pool.down_hold_s`).

A pool of scripted remote experts (`evals.bench.scripted`, an OpenAI-compatible server on
127.0.0.1, reached through litellm with two retries) is profiled healthy; then the
victim's endpoint answers every call with HTTP 500, and the routed model `conclave`
answers the test questions 8 at a time (as from 8 clients), in rounds that alternate
holds off (`down_hold_s` 0: every question routed to the victim asks it, with its
retries, before the next best) and on (the default). Reported per round: seconds, calls
to the victim, questions planned past it, questions answered right.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evals.bench.free_agents_pools import POOLS
from evals.bench.pools import KEY_ENV, SHARED_DATA, _data, scripted_experts
from evals.bench.scripted import Script, ScriptedExpert, scripted_server
from orchestrator.errors import ConfigError


class HoldsRound(BaseModel):
    model_config = ConfigDict(extra="forbid")

    holds: bool = Field(..., description="Whether the pool held the failing expert down.")
    seconds: float
    victim_calls: int = Field(..., description="Questions that called the failing endpoint.")
    planned_past: int = Field(..., description="Questions the router planned past it.")
    right: int = Field(..., description="Questions answered right.")


class HoldsBench(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pool: str
    victim: str
    questions: int
    batch: int
    down_hold_s: float
    down_after: int
    rounds: list[HoldsRound]
    speedup: float = Field(
        ..., description="Median over pairs of rounds of seconds with holds off over on."
    )
    machine: str


def run_holds_bench(
    pool: str = "three-specialists",
    per_category: int = 30,
    rounds: int = 2,
    batch: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> HoldsBench:
    from kernels.autotune import cpu_line
    from orchestrator.conclave import Conclave
    from orchestrator.config import parse_config
    from orchestrator.formats import load_file
    from orchestrator.progress import progress_bar

    if pool not in POOLS:
        raise ConfigError(f"--pool {pool!r}: choose one of {', '.join(POOLS)}")
    if rounds < 1 or per_category < 1 or batch < 1:
        raise ConfigError("--rounds, --per-category and --batch must be at least 1")
    spec = POOLS[pool]
    # the free agent is no free agent here: the pool without it
    scripted = spec.pool.model_copy(
        update={"experts": [e for e in spec.pool.experts if e.name != spec.free_agent]}
    )
    os.environ.setdefault(KEY_ENV, "scripted")
    with tempfile.TemporaryDirectory(prefix="conclave-holds-") as tmp:
        folder = Path(tmp)
        profile_file, test_file = _data(SHARED_DATA, per_category, folder)
        validation, questions = load_file(profile_file), load_file(test_file)
        script = Script(scripted, validation + questions, seed)
        with scripted_server(scripted, validation + questions, seed, script=script) as url:
            experts = scripted_experts(scripted, url, max_concurrency=16)
            for e in experts:  # a provider's usual retries
                e["backend"].update(max_retries=2, backoff_s=0.2)
            cfg = parse_config(
                {
                    "pool": {"experts": experts},
                    "routing": {"embedder": "ngram"},
                    "cache_dir": str(folder / "cache"),
                }
            )
            out: list[HoldsRound] = []
            with Conclave(cfg) as c, progress_bar(disable=not progress) as bar:
                task = bar.add_task("profiling, then rounds", total=1 + 2 * rounds)
                c.profile(validation, dataset="mmlu-pro")
                bar.advance(task)
                # the victim's endpoint now fails every call (HTTP 500)
                script.experts[spec.victim] = ScriptedExpert(name=spec.victim, errors=1.0)
                for r in range(2 * rounds):
                    out.append(_round(c, questions, spec.victim, r % 2 == 1, batch))
                    bar.advance(task)
            hold = cfg.pool.down_hold_s
    off = [r.seconds for r in out if not r.holds]
    on = [r.seconds for r in out if r.holds]
    return HoldsBench(
        pool=pool,
        victim=spec.victim,
        questions=len(questions),
        batch=batch,
        down_hold_s=hold,
        down_after=cfg.pool.down_after,
        rounds=out,
        speedup=round(statistics.median(a / b for a, b in zip(off, on, strict=True)), 2),
        machine=cpu_line(),
    )


def _round(c: Any, questions: list[Any], victim: str, holds: bool, batch: int) -> HoldsRound:
    pool = c.pool
    pool.holds.hold_s = pool.config.pool.down_hold_s if holds else 0.0
    pool.holds.reset(victim)  # each round starts as the first: no hold, no count
    t0 = time.perf_counter()
    traces = []
    for i in range(0, len(questions), batch):
        traces += c.answer(questions[i : i + batch], "conclave")
    seconds = time.perf_counter() - t0
    asked = [a for t in traces for a in t.answers if a.expert == victim]
    return HoldsRound(
        holds=holds,
        seconds=round(seconds, 2),
        victim_calls=sum("held down" not in (a.error or "") for a in asked),
        planned_past=sum(victim in t.explanation.down for t in traces if t.explanation),
        right=sum(bool(t.correct) for t in traces),
    )
