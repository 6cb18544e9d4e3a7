"""The `conclave` command line: a thin shell over the orchestrator and the pool.

Heavy libraries (torch, vLLM, Ray, litellm) load only inside the commands that need them,
so `conclave --help` is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.errors import ConclaveError

app = typer.Typer(
    name="conclave",
    help="Conclave: answer each question with the right expert LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check and explain configuration files.", no_args_is_help=True)
pool_app = typer.Typer(help="Run requests on the expert pool.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(pool_app, name="pool")
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
    return typer.Exit(code=2)


@config_app.command("validate")
def config_validate(
    path: Annotated[Path, typer.Argument(help="YAML config file.")],
) -> None:
    """Validate a config file and list its experts."""
    from orchestrator.config import load_config

    try:
        cfg = load_config(path)
    except ConclaveError as e:
        raise _fail(e) from None
    table = Table(title=f"{path}: valid")
    for col in ("expert", "backend", "model", "roles", "memory_gb"):
        table.add_column(col)
    for e in cfg.pool.experts:
        table.add_row(
            e.name,
            e.backend.type,
            getattr(e.backend, "model", "-"),
            ", ".join(r.value for r in e.roles),
            f"{e.resources.memory_gb:g}",
        )
    out.print(table)


@config_app.command("schema")
def config_schema() -> None:
    """Print the config's JSON schema (every field with its description)."""
    from orchestrator.config import ConclaveConfig

    print(json.dumps(ConclaveConfig.model_json_schema(), indent=2))


@pool_app.command("run")
def pool_run(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    prompt: Annotated[
        list[str], typer.Option("--prompt", "-p", help="A user message; repeatable.")
    ],
    expert: Annotated[
        list[str] | None, typer.Option("--expert", "-e", help="Expert to ask (default: all).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON lines.")] = False,
) -> None:
    """Ask experts the given prompts as one batch (grouped by expert, each loaded once)."""
    from orchestrator.config import load_config
    from workers.batch import GenerationRequest
    from workers.pool import ExpertPool

    try:
        cfg = load_config(config)
        names = expert or [e.name for e in cfg.pool.experts]
        reqs = [
            GenerationRequest(
                item_id=f"{i}:{n}", expert=n, messages=[{"role": "user", "content": p}]
            )
            for i, p in enumerate(prompt)
            for n in names
        ]
        with ExpertPool(cfg) as pool:
            results = pool.run(reqs, progress=not as_json)
            stats = pool.stats.as_dict()
    except ConclaveError as e:
        raise _fail(e) from None
    if as_json:
        for r in results:
            print(r.model_dump_json())
        return
    table = Table(title=f"{len(results)} answers, {stats['loads']} model loads")
    for col in ("item", "expert", "answer / error"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(r.item_id, r.expert, r.text if r.ok else f"[red]{r.error.message}[/]")  # type: ignore[union-attr]
    out.print(table)
    if any(not r.ok for r in results):
        raise typer.Exit(code=1)


@bench_app.command("pool")
def bench_pool(
    questions: Annotated[int, typer.Option(min=1, help="Questions in the batch.")] = 200,
    per_question: Annotated[int, typer.Option(min=1, help="Experts asked per question.")] = 3,
    models: Annotated[int, typer.Option(min=1, help="Tiny models in the pool.")] = 5,
    naive_sample: Annotated[
        int, typer.Option(min=1, help="Requests timed for the load-per-request baseline.")
    ] = 20,
    seed: Annotated[int, typer.Option(help="Seed for the questions and the sample.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the figures as JSON only.")
    ] = False,
    output: Annotated[Path | None, typer.Option("--out", help="Also write the JSON here.")] = None,
) -> None:
    """Grouped load-once scheduling vs loading the model per request, on tiny models."""
    from orchestrator.files import atomic_write_json
    from workers.bench import run_pool_bench

    try:
        res = run_pool_bench(
            questions, per_question, models, naive_sample, seed, progress=not as_json
        )
    except (ConclaveError, ValueError) as e:
        raise _fail(e) from None
    if output:
        atomic_write_json(output, res)
    if as_json:
        print(json.dumps(res, indent=2))
        return
    table = Table(title=f"pool benchmark: {res['requests']} requests over {res['models']} models")
    for col in ("scheduling", "model loads", "wall s"):
        table.add_column(col)
    g, n = res["grouped"], res["naive"]
    table.add_row("grouped, load once", str(g["model_loads"]), str(g["wall_s"]))
    table.add_row(
        "grouped, 2nd batch", str(g["second_batch_model_loads"]), str(g["second_batch_wall_s"])
    )
    table.add_row(
        f"naive ({n['note']})", f"{res['requests']} (est.)", str(n["extrapolated_wall_s"])
    )
    out.print(table)
    out.print(f"speedup: [bold]{res['speedup']}x[/]   failed requests: {res['failed_requests']}")


def main() -> None:  # pragma: no cover - console entry for `python -m orchestrator.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
