"""`conclave config`: check and explain configuration files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.cli.experts import memory_gb
from orchestrator.cli.render import err, fail, print_json, simple_table
from orchestrator.errors import ConclaveError

if TYPE_CHECKING:
    from orchestrator.config import ConclaveConfig

app = typer.Typer(help="Check and explain configuration files.", no_args_is_help=True)


@app.command("validate")
def config_validate(
    path: Annotated[Path, typer.Argument(help="YAML config file.")],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="A dataset to check the experts' contexts against ('skillmix' or a file): "
            "warns for each expert that would refuse some of its prompts as too long.",
        ),
    ] = None,
) -> None:
    """Validate a config file and list its experts; with --data, check that their
    contexts take the dataset's prompts."""
    from orchestrator.config import VLLMBackendConfig, load_config

    try:
        cfg = load_config(path)
    except ConclaveError as exc:
        raise fail(exc) from None
    problems = [
        f"pool.experts[{i}] ({e.name}): {why}"
        for i, e in enumerate(cfg.pool.experts)
        if isinstance(e.backend, VLLMBackendConfig)
        for why in e.backend.local_problems()
    ]
    if problems:
        err.print(f"[red]error:[/] {path}: " + "; ".join(problems))
        raise typer.Exit(code=1)
    if data is not None:
        _check_contexts(cfg, data)
    simple_table(
        f"{path}: valid",
        ("expert", "backend", "model", "roles", "memory_gb"),
        (
            (
                e.name,
                e.backend.type,
                getattr(e.backend, "model", "-"),
                ", ".join(r.value for r in e.roles),
                "-" if (gb := memory_gb(e)) is None else f"{gb:g}",
            )
            for e in cfg.pool.experts
        ),
    )


def _check_contexts(cfg: ConclaveConfig, data: str) -> None:
    """A warning per expert whose context is too short for some of `data`'s prompts."""
    from evals.datasets import eval_items
    from orchestrator.prompts import messages_for
    from workers.context import overflow

    try:
        items = eval_items(data, "test")
    except ConclaveError as exc:
        raise fail(exc) from None
    prompts = [messages_for(it.question, it.answer_type) for it in items]
    for e in cfg.pool.experts:
        over = overflow(e, prompts)
        if over is not None:
            err.print(
                f"[yellow]warning:[/] {e.name}: {over.refused} of {over.prompts} prompts of "
                f"{data} are longer than its context ({over.limit}; the longest has "
                f"{over.longest}): it will refuse them. Raise its engine_args.max_model_len "
                "(if the model takes it), or leave it out of runs on this data"
            )


@app.command("schema")
def config_schema() -> None:
    """Print the config's JSON schema (every field with its description)."""
    from orchestrator.config import ConclaveConfig

    print_json(ConclaveConfig.model_json_schema())
