"""`conclave bench routing`: every strategy on pools of scripted experts whose accuracy
per category is known, with no LLM, in minutes.

Each pool's experts are scripted models (`evals.bench.scripted`) served by an
OpenAI-compatible test server on 127.0.0.1 and reached through the remote (litellm)
backend, as real API experts are; a scripted keyword model names each question's
keywords. For each pool and seed, `conclave eval` runs on the shared MMLU-Pro files
(profiling on `MMLU_Pro_train.json`, answering the first `per_category` questions of each
category of `MMLU_Pro_test.json`), and its summary gives each strategy's accuracy and
expert calls per question, the per-category oracle and majority vote. The gap is a
strategy's accuracy minus max(oracle, majority), per seed: how far routing is from the
better of the two references (an oracle that picks the best expert per category on the
test split itself, and asking everyone).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from evals.bench.pools_report import (
    PoolFigures,
    PoolsBenchResult,
    SeedRun,
    chart_png,
    pool_figures,
    standings,
)
from evals.bench.random_pools import HINT, drawn, random_routing_pool
from evals.bench.scripted import (
    AGGREGATOR,
    CATEGORIES,
    KEYWORD_MODEL,
    ScriptedExpert,
    ScriptedPool,
    resolve_specs,
    scripted_server,
)
from orchestrator.config import ConclaveConfig, parse_config
from orchestrator.errors import ConfigError
from orchestrator.formats import load_file

#: the shared Symbolic-MoE data, next to the repository (as the tests find it)
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "symbolic-moe"
PROFILE_FILE, TEST_FILE = "MMLU_Pro_train.json", "MMLU_Pro_test.json"
KEY_ENV = "CONCLAVE_SCRIPTED_KEY"  # the remote backend wants a key; the server takes any
STRATEGY_ORDER = ("conclave", "symbolic-moe", "best-single", "majority", "moa", "random-k")
ORACLE, MAJORITY = "oracle (reference)", "majority"


def _specialist(
    name: str, cats: Sequence[str], acc: float = 0.85, elsewhere: float = 0.25
) -> ScriptedExpert:
    return ScriptedExpert(name=name, accuracy=dict.fromkeys(cats, acc), default=elsewhere)


SPECIALISTS = [
    _specialist("stem", ("math", "physics", "engineering", "computer science")),
    _specialist("life", ("biology", "chemistry", "health")),
    _specialist("social", ("business", "economics", "psychology", "law")),
    _specialist("humanities", ("history", "philosophy", "other")),
    ScriptedExpert(name="generalist", default=0.5),
]

POOLS: dict[str, ScriptedPool] = {
    p.name: p
    for p in (
        ScriptedPool(
            name="specialists",
            description="four specialists (0.85 on 3-4 categories, 0.25 elsewhere) + a "
            "generalist (0.5)",
            experts=SPECIALISTS,
        ),
        ScriptedPool(
            name="generalists",
            description="five generalists (0.55-0.65) with independent errors",
            experts=[
                ScriptedExpert(name=f"gen{i}", default=a)
                for i, a in enumerate((0.55, 0.58, 0.6, 0.62, 0.65))
            ],
            distractor=0.0,
        ),
        ScriptedPool(
            name="dominant",
            description="one dominant model (0.8) with four weak ones (0.35)",
            experts=[
                ScriptedExpert(name="strong", default=0.8),
                *(ScriptedExpert(name=f"weak{i}", default=0.35) for i in range(4)),
            ],
        ),
        ScriptedPool(
            name="faulty",
            description="the specialists + a model (0.6) that returns garbage 50% and HTTP "
            "500 20% of the time",
            experts=[
                *SPECIALISTS,
                ScriptedExpert(name="flaky", default=0.6, garbage=0.5, errors=0.2),
            ],
        ),
        ScriptedPool(
            name="noisy-keywords",
            description="the specialists, with a keyword model whose answers name another "
            "category's keywords 30% of the time",
            experts=SPECIALISTS,
            keyword_error=0.3,
        ),
        ScriptedPool(
            name="misleading-keywords",
            description="the specialists, with a keyword model that names another "
            "category's keywords for 30% of questions, every time it is asked",
            experts=SPECIALISTS,
            keyword_error=0.3,
            keyword_error_per_question=True,
        ),
        ScriptedPool(
            name="twenty",
            description="20 experts: 14 one-category specialists (0.85, 0.3 elsewhere) + "
            "6 generalists (0.45-0.6)",
            experts=[
                *(_specialist(f"s-{c.replace(' ', '-')}", [c], 0.85, 0.3) for c in CATEGORIES),
                *(
                    ScriptedExpert(name=f"g{i}", default=a)
                    for i, a in enumerate((0.45, 0.5, 0.5, 0.55, 0.55, 0.6))
                ),
            ],
        ),
        ScriptedPool(
            name="smoke",
            description="the smallest: two specialists (0.9 on 7 categories each, 0.2 "
            "elsewhere), a generalist (0.5) and a flaky model (0.5; garbage 30%, HTTP 500 "
            "20%); for tests, not in the default run",
            experts=[
                _specialist("left", CATEGORIES[:7], 0.9, 0.2),
                _specialist("right", CATEGORIES[7:], 0.9, 0.2),
                ScriptedExpert(name="generalist", default=0.5),
                ScriptedExpert(name="flaky", default=0.5, garbage=0.3, errors=0.2),
            ],
        ),
    )
}
DEFAULT_POOLS = tuple(p for p in POOLS if p != "smoke")


def default_strategies() -> list[str]:
    """Every registered strategy an eval can run, in the order of `STRATEGY_ORDER` (the
    product's own first), then any other registered ones."""
    from orchestrator.strategies import STRATEGIES, get_strategy

    for name in STRATEGY_ORDER:  # getting one loads the built-ins, and a lazy `conclave`
        with contextlib.suppress(ConfigError):
            get_strategy(name)
    names = [n for n in STRATEGIES.names() if not get_strategy(n).needs_expert]
    ordered = [n for n in STRATEGY_ORDER if n in names]
    return ordered + [n for n in names if n not in ordered]


def _data(data_dir: Path, per_category: int, folder: Path) -> tuple[Path, Path]:
    """The profiling file as it is, and a test file of the first `per_category` questions
    of each category (ids are the rows' places in the full file, so a question's scripted
    answers do not depend on `per_category`)."""
    profile, test = data_dir / PROFILE_FILE, data_dir / TEST_FILE
    missing = [str(p) for p in (profile, test) if not p.is_file()]
    if missing:
        raise ConfigError(
            f"the shared MMLU-Pro files are missing: {', '.join(missing)}; the routing "
            "benchmark needs the Symbolic-MoE data in ../shared/data/symbolic-moe"
        )
    rows = json.loads(test.read_text())
    seen: dict[str, int] = {}
    subset = []
    for i, row in enumerate(rows):
        cat = str(row.get("category"))
        if seen.get(cat, 0) < per_category:
            seen[cat] = seen.get(cat, 0) + 1
            subset.append({**row, "id": f"{test.stem}-{i}"})
    out = folder / f"{test.stem}-{per_category}-per-category.json"
    out.write_text(json.dumps(subset))
    return profile, out


def scripted_experts(pool: ScriptedPool, url: str, max_concurrency: int) -> list[dict[str, Any]]:
    """The config's experts for `pool` on its scripted server at `url`: each scripted
    model, the keyword model and the aggregator, as remote (litellm) experts."""

    def expert(name: str, roles: list[str]) -> dict[str, Any]:
        backend = {
            "type": "remote",
            "model": f"openai/{name}",
            "api_base": url,
            "api_key_env": KEY_ENV,
            "max_concurrency": max_concurrency,
            "max_retries": 1,
            "backoff_s": 0.05,
            "timeout_s": 30,
        }
        return {"name": name, "roles": roles, "backend": backend}

    return [
        *(expert(e.name, ["expert"]) for e in pool.experts),
        expert(KEYWORD_MODEL, ["keywords"]),
        expert(AGGREGATOR, ["aggregator"]),
    ]


def _config(
    pool: ScriptedPool, url: str, seed: int, embedder: str, cache: Path, skills: str = "auto"
) -> ConclaveConfig:
    return parse_config(
        {
            "pool": {"experts": scripted_experts(pool, url, max_concurrency=16)},
            "routing": {"embedder": embedder, "router": {"seed": seed}, "skills": skills},
            "cache_dir": str(cache),
        }
    )


def run_pool(
    pool: ScriptedPool,
    seed: int,
    profile: Path,
    test: Path,
    strategies: Sequence[str],
    folder: Path,
    embedder: str = "all-MiniLM-L6-v2",
    skills: str = "auto",
) -> tuple[SeedRun, dict[str, Any]]:
    """One `conclave eval` run of `pool` at `seed` against its scripted server: its
    figures, and the run's summary (strategy -> `StrategySummary` fields)."""
    from evals.harness import EvalSpec, run_eval
    from evals.harness.rundir import read_results
    from orchestrator.conclave import Conclave

    t0 = time.perf_counter()
    items = load_file(profile) + load_file(test)
    os.environ.setdefault(KEY_ENV, "scripted")
    spec = EvalSpec(
        dataset=str(test), profile_dataset=str(profile), strategies=list(strategies), seed=seed
    )
    run_dir = folder / "runs" / pool.name / f"seed-{seed}"
    with scripted_server(pool, items, seed) as url:
        cfg = _config(pool, url, seed, embedder, folder / "cache", skills)
        with Conclave(cfg, reuse_answers=True) as c:
            res = run_eval(c, spec, run_dir, folder / "cache", progress=False)
            st = c.state
            setup = (
                {
                    "neighbour_weight": st.neighbour_weight,
                    "neighbours": st.neighbours,
                    "prior_strength": st.prior_strength,
                    "priors": st.priors,
                    "synthesis": st.synthesis,
                    "skills": c.skills_source(),
                    "skills_scores": st.skills_scores,
                }
                if st is not None
                else {}
            )
    summary = res["strategies"]
    if ORACLE not in summary:
        raise ConfigError(f"pool {pool.name}: the run gave no oracle (did majority run?)")
    failed = sum(a["error"] is not None for r in read_results(run_dir) for a in r["answers"])
    return SeedRun(
        seed=seed,
        accuracy={s: summary[s]["accuracy"] for s in strategies},
        oracle=summary[ORACLE]["accuracy"],
        majority=summary[MAJORITY]["accuracy"],
        singles={
            k.removeprefix("single:"): v["accuracy"]
            for k, v in summary.items()
            if k.startswith("single:")
        },
        validation_accuracy=res["validation_accuracy"],
        aggregator=res["aggregator"],
        conclave=setup,
        best_single=res["best_single"],
        failed_answers=failed,
        wall_s=round(time.perf_counter() - t0, 1),
    ), summary


def run_pools_bench(
    pools: Sequence[str | ScriptedPool] | None = None,
    seeds: int = 3,
    per_category: int = 10,
    strategies: list[str] | None = None,
    out: Path | None = None,
    progress: bool = True,
    embedder: str = "all-MiniLM-L6-v2",
    data_dir: Path | None = None,
    skills: str = "auto",
) -> PoolsBenchResult:
    """Every strategy (default: `default_strategies()`; majority always runs, as the
    oracle is derived from it) on each pool (default: `DEFAULT_POOLS`; `random-<seed>`
    draws one, `random_routing_pool`) at seeds 0 .. `seeds`-1. With `out`, the chart is
    written next to it (`<out stem>.png`); the run directories stay in a temporary folder
    that is removed at the end."""
    from evals.harness import check_strategies, machine

    given = drawn(pools or DEFAULT_POOLS, random_routing_pool)
    specs = resolve_specs(given, POOLS, lambda p: p.name, or_else=HINT)
    chosen = list(dict.fromkeys(strategies or default_strategies()))
    if MAJORITY not in chosen:
        chosen.append(MAJORITY)
    check_strategies(chosen)
    if seeds < 1 or per_category < 1:
        raise ConfigError("seeds and per_category must be at least 1")
    t0 = time.perf_counter()
    results: list[PoolFigures] = []
    with tempfile.TemporaryDirectory(prefix="conclave-pools-") as tmp:
        folder = Path(tmp)
        profile, test = _data(data_dir or SHARED_DATA, per_category, folder)
        profile_items, test_items = load_file(profile), load_file(test)
        with _steps(len(specs) * seeds, progress) as step:
            for spec in specs:
                runs = []
                for seed in range(seeds):
                    step(f"{spec.name} (seed {seed})")
                    runs.append(
                        run_pool(spec, seed, profile, test, chosen, folder, embedder, skills)
                    )
                results.append(pool_figures(spec, runs, chosen, profile_items, test_items))
            step("done")
    res = PoolsBenchResult(
        seeds=list(range(seeds)),
        per_category=per_category,
        test_questions=len(test_items),
        profile_questions=len(profile_items),
        strategies=chosen,
        embedder=embedder,
        skills=skills,
        machine=machine(),
        wall_s=round(time.perf_counter() - t0, 1),
        pools=results,
        standings=standings(results, chosen),
    )
    if out is not None:
        from orchestrator.files import atomic_write_bytes

        chart = out.with_suffix(".png")
        atomic_write_bytes(chart, chart_png(res))
        res.chart = str(chart)
    return res


@contextlib.contextmanager
def _steps(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    """One rich progress bar (on stderr) over the (pool, seed) runs; yields `step(label)`,
    called as each run starts. litellm's own logger is kept quiet meanwhile: its logging
    worker reports an error for each call after the first event loop (the remote backend
    runs one per batch), which would bury the bar."""
    from rich.console import Console

    from orchestrator.progress import progress_bar

    lm_log = logging.getLogger("LiteLLM")
    level = lm_log.level
    lm_log.setLevel(logging.CRITICAL)
    bar = progress_bar(28, console=Console(stderr=True), disable=not enabled)
    task = bar.add_task("starting", total=total)
    started = [False]

    def step(label: str) -> None:
        bar.update(task, description=label, advance=1 if started[0] else 0)
        started[0] = True

    try:
        with bar:
            yield step
    finally:
        lm_log.setLevel(level)
