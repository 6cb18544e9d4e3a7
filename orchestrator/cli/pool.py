"""`conclave pool`: run requests on the expert pool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli.render import fail, out
from orchestrator.errors import ConclaveError

app = typer.Typer(help="Run requests on the expert pool.", no_args_is_help=True)


@app.command("run")
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
    except ConclaveError as exc:
        raise fail(exc) from None
    if as_json:
        for r in results:
            print(r.model_dump_json())
        return
    table = Table(title=f"{len(results)} answers, {stats['loads']} model loads")
    for col in ("item", "expert", "answer / error"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(
            r.item_id, r.expert, r.text if r.error is None else f"[red]{r.error.message}[/]"
        )
    out.print(table)
    if any(not r.ok for r in results):
        raise typer.Exit(code=1)
