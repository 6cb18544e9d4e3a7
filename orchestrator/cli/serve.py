"""`conclave serve`: the OpenAI-compatible REST gateway."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.options import ConfigOpt, DataOpt, ZooDir, ZooProfile, pool_config
from orchestrator.cli.render import fail, log_line
from orchestrator.errors import ConclaveError


def serve_cmd(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (config: 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (config: 8000; 0: any free one).")
    ] = None,
    data: DataOpt = "skillmix",
    zoo: ZooProfile = None,
    zoo_dir: ZooDir = None,
    passthrough_only: Annotated[
        bool,
        typer.Option(
            "--passthrough-only",
            help="Serve the experts by name only: no routing profile, no 'conclave' model.",
        ),
    ] = False,
    ray_serve: Annotated[
        bool,
        typer.Option(
            "--ray-serve",
            help="Run as a Ray Serve application on the config's Ray cluster (its proxy "
            "binds host:port; the Serve tab of the Ray dashboard shows it).",
        ),
    ] = False,
    preload: Annotated[
        bool | None,
        typer.Option(
            "--preload/--no-preload",
            help="Load the experts that fit before serving (config: gateway.preload, on).",
        ),
    ] = None,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="A line per request on stderr (config: gateway.access_log, on).",
        ),
    ] = None,
) -> None:
    """Serve the OpenAI-compatible REST gateway (model 'conclave' or an expert's name).

    Loads the cached routing profile (profiling first if there is none) and the experts
    that fit side by side, then serves /v1/chat/completions, /v1/models, /v1/route,
    /healthz, /readyz and /metrics.
    """
    from orchestrator.config import GatewaySettings
    from orchestrator.gateway import serve
    from orchestrator.gateway.serving import listen

    try:
        if config is None:  # building the zoo takes minutes the first time: is the port free?
            default = GatewaySettings()
            listen(host or default.host, default.port if port is None else port).close()
        cfg = pool_config(config, zoo, zoo_dir, on_event=log_line)
        given = (("host", host), ("port", port), ("preload", preload), ("access_log", access_log))
        settings = cfg.gateway.model_copy(update={k: v for k, v in given if v is not None})
        cfg = cfg.model_copy(update={"gateway": settings})
        serve(cfg, ensemble=not passthrough_only, data=data, ray_serve=ray_serve, on_event=log_line)
    except ConclaveError as exc:
        raise fail(exc) from None
