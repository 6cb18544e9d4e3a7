"""`conclave bench pool`: grouped load-once scheduling against a load per request."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.options import FiguresJson, FiguresOut
from orchestrator.cli.render import emit_json, fail, figures, out, simple_table
from orchestrator.errors import ConclaveError


def bench_pool(
    questions: Annotated[int, typer.Option(min=1, help="Questions in the batch.")] = 200,
    per_question: Annotated[int, typer.Option(min=1, help="Experts asked per question.")] = 3,
    models: Annotated[int, typer.Option(min=1, help="Tiny models in the pool.")] = 5,
    naive_sample: Annotated[
        int, typer.Option(min=1, help="Requests timed for the load-per-request baseline.")
    ] = 20,
    seed: Annotated[int, typer.Option(help="Seed for the questions and the sample.")] = 0,
    as_json: FiguresJson = False,
    output: FiguresOut = None,
) -> None:
    """Grouped load-once scheduling vs loading the model per request, on tiny models."""
    from evals.bench import run_pool_bench

    try:
        res = figures(
            run_pool_bench(
                questions, per_question, models, naive_sample, seed, progress=not as_json
            )
        )
    except (ConclaveError, ValueError) as exc:
        raise fail(exc) from None
    if emit_json(res, output, as_json):
        return
    g, n = res["grouped"], res["naive"]
    simple_table(
        f"pool benchmark: {res['requests']} requests over {res['models']} models",
        ("scheduling", "model loads", "wall s"),
        (
            ("grouped, load once", str(g["model_loads"]), str(g["wall_s"])),
            (
                "grouped, 2nd batch",
                str(g["second_batch_model_loads"]),
                str(g["second_batch_wall_s"]),
            ),
            (f"naive ({n['note']})", f"{res['requests']} (est.)", str(n["extrapolated_wall_s"])),
        ),
    )
    out.print(f"speedup: [bold]{res['speedup']}x[/]   failed requests: {res['failed_requests']}")
