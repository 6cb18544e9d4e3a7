"""`conclave experts`: the experts of a config or the embedded zoo, with live status."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from orchestrator.cli.options import ConfigOpt, JsonOnly, ZooDir, zoo_options_unused
from orchestrator.cli.render import fail, out, print_json
from orchestrator.errors import ConclaveError

if TYPE_CHECKING:
    from orchestrator.config import ExpertConfig

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
        zoo_options_unused(config, None, zoo_dir)
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
                "memory_gb": memory_gb(e),
                "trained_on": entry.trained_on if entry else None,
                "architecture": entry.architecture if entry else None,
                "live": live[e.name].model_dump() if e.name in live else None,
            }
        )
    if as_json:
        print_json({"gateway": url, "live": why, "experts": rows})
        return
    # 80 columns: one-word cells that never wrap; with a gateway answering, its live
    # columns, else the zoo's training categories, wrapping in the last column (--json
    # has every field)
    table = Table(
        title=f"{len(rows)} experts; live status from {url}: {why}",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    for col in ("expert", "backend", "model", "roles", "GB"):
        table.add_column(col, no_wrap=True, justify="right" if col == "GB" else "left")
    if live:
        for col in ("state", "requests", "errors", "batch s"):
            table.add_column(col, justify="right", no_wrap=True)
    else:
        table.add_column("trained on", ratio=1)
    for r in rows:
        model = r["architecture"] or (Path(r["model"]).name if r["model"] else "-")
        table.add_row(
            r["name"],
            r["backend"],
            model.removesuffix("ForCausalLM"),
            ", ".join(r["roles"]),
            "-" if r["memory_gb"] is None else f"{r['memory_gb']:g}",
            *(_live_cells(r["live"]) if live else [", ".join(r["trained_on"] or []) or "-"]),
        )
    out.print(table)
    for r in rows:  # why an expert is down does not fit a cell
        if r["live"] and r["live"].get("down"):
            out.print(f"{r['name']} is down: {r['live']['down']}")


def _live_cells(live: dict[str, Any] | None) -> list[str]:
    if not live:
        return ["-"] * 4
    return [
        "down" if live.get("down") else "loaded" if live["loaded"] else "not loaded",
        str(live["requests"]),
        str(live["errors"]),
        str(live["mean_batch_seconds"] or "-"),
    ]


def _live_status(url: str, api_key: str | None) -> tuple[dict[str, Any], str]:
    """Live status by expert from the gateway at `url`, and what happened asking it."""
    from orchestrator.sdk import ConclaveClient, GatewayClientError, GatewayUnreachableError

    try:
        with ConclaveClient(url, api_key=api_key, timeout=2.0) as c:
            return {s.name: s for s in c.experts()}, "serving"
    except GatewayUnreachableError:
        return {}, "no gateway running there"
    except ValueError as exc:  # not an address
        return {}, str(exc)
    except GatewayClientError as exc:
        return {}, f"the gateway answered {exc.status}: {exc.message}"


def memory_gb(e: ExpertConfig) -> float | None:
    """The memory an expert's model takes on this cluster; None for a backend that holds
    none here (a remote expert: its model runs at the provider)."""
    from workers.backend import BACKENDS

    try:
        resident = getattr(BACKENDS.get(e.backend.type), "resident", True)
    except ConclaveError:  # a plug-in not importable here: say what the config says
        resident = True
    return e.resources.memory_gb if resident else None
