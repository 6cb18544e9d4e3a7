"""`conclave experts`: the experts of a config or the embedded zoo, with live status."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator.cli.options import ConfigOpt, JsonOnly, ZooDir
from orchestrator.cli.render import fail, out, print_json
from orchestrator.errors import ConclaveError

app = typer.Typer(help="The experts of a config or the embedded zoo.", no_args_is_help=True)


@app.command("list")
def experts_list(
    config: ConfigOpt = None,
    zoo_dir: ZooDir = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            help="Gateway to ask for live status (default: the config's host:port).",
        ),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="CONCLAVE_API_KEY", help="Its API key, if it needs one.")
    ] = None,
    as_json: JsonOnly = False,
) -> None:
    """The experts: backend, model, roles, memory, what the zoo built them from, and live
    status (loaded, requests, errors, batch seconds) from a running gateway."""
    from agents.zoo.default import existing_config

    try:
        cfg, manifest = existing_config(config, zoo_dir)
    except ConclaveError as exc:
        raise fail(exc) from None
    url = gateway or f"http://{cfg.gateway.host}:{cfg.gateway.port}"
    live, why = _live_status(url, api_key)
    rows: list[dict[str, Any]] = []
    for e in cfg.pool.experts:
        entry = manifest.entries.get(e.name) if manifest else None
        rows.append(
            {
                "name": e.name,
                "backend": e.backend.type,
                "model": getattr(e.backend, "model", None),
                "roles": [r.value for r in e.roles],
                "memory_gb": e.resources.memory_gb,
                "trained_on": entry.trained_on if entry else None,
                "architecture": entry.architecture if entry else None,
                "live": live[e.name].model_dump() if e.name in live else None,
            }
        )
    if as_json:
        print_json({"gateway": url, "live": why, "experts": rows})
        return
    table = Table(title=f"{len(rows)} experts; live status from {url}: {why}")
    for col in ("expert", "backend", "architecture", "roles", "trained on", "memory GB"):
        table.add_column(col)
    for col in ("state", "requests", "errors", "batch s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["name"],
            r["backend"],
            r["architecture"] or str(r["model"]),
            ", ".join(r["roles"]),
            ", ".join(r["trained_on"] or []) or "-",
            f"{r['memory_gb']:g}",
            *_live_cells(r["live"]),
        )
    out.print(table)


def _live_cells(live: dict[str, Any] | None) -> list[str]:
    if not live:
        return ["-"] * 4
    return [
        "loaded" if live["loaded"] else "not loaded",
        str(live["requests"]),
        str(live["errors"]),
        str(live["mean_batch_seconds"] or "-"),
    ]


def _live_status(url: str, api_key: str | None) -> tuple[dict[str, Any], str]:
    """Live status by expert from the gateway at `url`, and what happened asking it."""
    import httpx

    from orchestrator.sdk import ConclaveClient, GatewayClientError

    try:
        with ConclaveClient(url, api_key=api_key, timeout=2.0) as c:
            return {s.name: s for s in c.experts()}, "serving"
    except httpx.HTTPError:
        return {}, "no gateway running there"
    except GatewayClientError as exc:
        return {}, f"the gateway answered {exc.status}: {exc.message}"
