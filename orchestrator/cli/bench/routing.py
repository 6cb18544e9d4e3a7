"""`conclave bench route` (recruitment throughput) and `conclave bench routing` (the
strategies' accuracy on scripted pools)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli.options import FiguresJson, FiguresOut
from orchestrator.cli.render import emit_json, fail, figures, out, print_table, simple_table
from orchestrator.errors import ConclaveError


def bench_route(
    questions: Annotated[int, typer.Option(min=1, help="Questions routed warm.")] = 20_000,
    experts: Annotated[int, typer.Option(min=1, help="Experts with profiles.")] = 16,
    cold: Annotated[int, typer.Option(min=1, help="Questions routed with new keywords.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the profiles and keywords.")] = 0,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """Recruitment throughput with LLM calls excluded: keyword mapping, scoring, selection."""
    from evals.bench import run_routing_bench

    res = figures(
        run_routing_bench(questions=questions, experts=experts, cold_questions=cold, seed=seed)
    )
    if emit_json(res, output, as_json):
        return
    w, c = res["warm"], res["cold"]
    simple_table(
        f"routing: {res['experts']} experts, {res['inventory_keywords']} inventory "
        f"keywords ({res['embedder']})",
        ("keywords", "questions", "seconds", "questions/s"),
        (
            ("cached (repeat)", str(w["questions"]), str(w["seconds"]), str(w["questions_per_s"])),
            ("all new (cold)", str(c["questions"]), str(c["seconds"]), str(c["questions_per_s"])),
        ),
    )


def bench_routing(
    pool: Annotated[
        list[str] | None,
        typer.Option(
            "--pool",
            help="Pool to run; repeatable. Default: specialists, generalists, dominant, "
            "faulty, noisy-keywords, misleading-keywords, twenty (also: smoke, and "
            "random-<seed>: a pool drawn at random, the same for a seed).",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Runs per pool, one per seed.")] = 3,
    per_category: Annotated[
        int, typer.Option(min=1, help="Test questions per MMLU-Pro category.")
    ] = 10,
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            "-s",
            help="Strategy to run; repeatable. Default: every registered one an eval can run "
            "(majority always runs: the oracle comes from it).",
        ),
    ] = None,
    skills: Annotated[
        str,
        typer.Option(
            help="Where conclave gets a question's skills (routing.skills): auto (the "
            "default: what profiling chose per pool), keywords (the keyword model) or "
            "embedding (its nearest validation questions, no LLM call).",
        ),
    ] = "auto",
    pool_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--pool-file",
            help="A pool of your own (YAML or JSON: `name`, `description` and scripted "
            "`experts`, each with its `accuracy` per MMLU-Pro category and a `default`; see "
            "docs/pools/routing.yaml); repeatable; runs only the pools named by --pool and "
            "given here.",
        ),
    ] = None,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """Every strategy on pools of scripted experts with known accuracy per category (no
    LLM): accuracy, expert calls per question and the gap to max(oracle, majority)."""
    from evals.bench import run_pools_bench
    from evals.bench.scripted import ScriptedPool, load_spec

    try:
        given: list[str | ScriptedPool] = [*(pool or [])]
        given += [load_spec(f, ScriptedPool) for f in pool_file or []]
        res = figures(
            run_pools_bench(
                given or None,
                seeds,
                per_category,
                strategy,
                output,
                progress=not as_json,
                skills=skills,
            )
        )
    except ConclaveError as exc:
        raise fail(exc) from None
    if emit_json(res, output, as_json):
        return
    print_routing(res)


def print_routing(res: dict[str, Any]) -> None:
    """`conclave bench routing`'s tables: one per pool, then the run's line."""
    for p in res["pools"]:
        rows = [
            (
                s["strategy"],
                f"{s['accuracy']['mean']:.1f}",
                _range(s["accuracy"]),
                f"{s['expert_calls_per_question']:g}",
                f"{s['gap']['mean']:+.1f}",
            )
            for s in p["strategies"]
        ]
        for name, spread in (
            ("oracle (reference)", p["oracle"]),
            ("max(oracle, majority)", p["reference"]),
        ):
            rows.append((name, f"{spread['mean']:.1f}", _range(spread), "-", "-"))
        rows.append(("oracle (expected)", f"{p['expected_oracle']:.1f}", "-", "-", "-"))
        print_table(
            f"pool {p['pool']} ({p['experts']} experts)",
            ("strategy", "acc %", "range", "expert calls/q", "gap"),
            rows,
            caption=f"mean of {len(res['seeds'])} seeds; gap: minus max(oracle, majority); "
            "expected: the best expert per category by its script",
        )
        out.print(f"{p['pool']}: {p['description']}\n", highlight=False)
    if res["standings"]:
        first, n = res["strategies"][0], len(res["pools"])
        print_table(
            f"{first} against each, over {n} pools",
            ("strategy", "ahead", "level", "behind", "mean diff", "worst diff (pool)"),
            [
                (
                    s["strategy"],
                    s["ahead"],
                    s["level"],
                    s["behind"],
                    f"{s['mean_difference']:+.1f}",
                    f"{s['worst_difference']:+.1f} ({s['worst_pool']})",
                )
                for s in res["standings"]
            ],
            caption=f"pools where {first}'s mean accuracy was above, equal to, below",
        )
    out.print(
        f"{res['test_questions']} test questions, profiled on {res['profile_questions']}; "
        f"{res['wall_s']} s ({res['machine']})"
        + (f"; chart: {res['chart']}" if res["chart"] else "")
    )


def _range(spread: dict[str, float]) -> str:
    return f"{spread['min']:.1f}-{spread['max']:.1f}"
