"""`conclave config`: check and explain configuration files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.render import err, fail, print_json, simple_table
from orchestrator.errors import ConclaveError

app = typer.Typer(help="Check and explain configuration files.", no_args_is_help=True)


@app.command("validate")
def config_validate(
    path: Annotated[Path, typer.Argument(help="YAML config file.")],
) -> None:
    """Validate a config file and list its experts."""
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
    simple_table(
        f"{path}: valid",
        ("expert", "backend", "model", "roles", "memory_gb"),
        (
            (
                e.name,
                e.backend.type,
                getattr(e.backend, "model", "-"),
                ", ".join(r.value for r in e.roles),
                f"{e.resources.memory_gb:g}",
            )
            for e in cfg.pool.experts
        ),
    )


@app.command("schema")
def config_schema() -> None:
    """Print the config's JSON schema (every field with its description)."""
    from orchestrator.config import ConclaveConfig

    print_json(ConclaveConfig.model_json_schema())
