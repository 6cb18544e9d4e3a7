"""`conclave agents`: the free-agent monitor's decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.options import ConfigOpt, JsonOnly
from orchestrator.cli.render import fail, print_json, simple_table
from orchestrator.errors import ConclaveError

app = typer.Typer(help="The free-agent monitor.", no_args_is_help=True)


@app.command("history")
def agents_history(
    config: ConfigOpt = None,
    log: Annotated[
        Path | None, typer.Option(help="Audit log (default: the config's, else the cache's).")
    ] = None,
    last: Annotated[int, typer.Option(min=1, help="Show the last N decisions.")] = 50,
    offset: Annotated[
        int | None,
        typer.Option(
            min=0, help="Page from the log's start instead: the first decision's index (0 based)."
        ),
    ] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Every decision, oldest first.")] = False,
    as_json: JsonOnly = False,
) -> None:
    """The monitor's decisions: releases, flags, probations, promotions, rejections. The
    last 50 by default; --offset pages through the whole audit log with --last as the
    page size; --all shows it all."""
    from datetime import datetime

    from agents.free_agents import AuditLog
    from orchestrator.config import AUDIT_LOG, default_cache_dir, load_config

    try:
        if log is None and config is not None:
            log = load_config(config).audit_log_path()
        path = log or default_cache_dir() / AUDIT_LOG
        if not path.exists():
            raise ConclaveError(f"no audit log at {path}: the monitor has decided nothing yet")
        whole = AuditLog(path).read()
        if show_all:
            start, entries = 0, whole
        elif offset is not None:
            start = min(offset, len(whole))
            entries = whole[start : start + last]
        else:
            start = max(len(whole) - last, 0)
            entries = whole[start:]
    except (ConclaveError, ValueError) as exc:
        raise fail(exc) from None
    if as_json:
        print_json([e.model_dump() for e in entries])
        return
    shown = f"{start + 1}-{start + len(entries)}" if entries else "none"
    simple_table(
        f"decisions {shown} of {len(whole)} ({path})",
        ("time", "task", "event", "agent", "incumbent", "reason"),
        (
            (
                datetime.fromtimestamp(e.time).strftime("%Y-%m-%d %H:%M:%S"),
                str(e.task),
                e.event,
                e.agent,
                e.incumbent or "-",
                e.reason,
            )
            for e in entries
        ),
    )
