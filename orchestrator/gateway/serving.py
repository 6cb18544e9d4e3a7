"""The one way to serve: `prepare` builds what a gateway serves, `serve` runs it.

`conclave serve` calls `serve`; a Ray Serve replica (`ray_serve`) calls `prepare`, so
both serve the same facade, profiled and preloaded the same way.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.conclave import Conclave
    from orchestrator.config import ConclaveConfig


def _quiet(_line: str) -> None:
    pass


def prepare(
    config: ConclaveConfig,
    *,
    ensemble: bool,
    data: str,
    progress: bool = False,
    on_event: Callable[[str], None] = _quiet,
) -> Conclave:
    """The facade to serve: with `ensemble`, its routing profile (the cached one for
    `data`'s validation items, profiling first if there is none); with
    `config.gateway.preload`, the experts that fit side by side loaded, so first answers
    wait for no model load. `on_event` hears the profiling's events, then how many
    experts loaded and why each other one did not. Raises `ConclaveError`, after closing
    the facade, when either fails."""
    from evals.datasets import eval_items
    from orchestrator.conclave import Conclave
    from orchestrator.profiling import ensure_profile

    conclave = Conclave(config)
    try:
        if ensemble:
            ensure_profile(
                conclave,
                eval_items(data),
                data,
                config.resolved_cache_dir(),
                progress=progress,
                on_event=on_event,
            )
        for name, why in conclave.pool.connect().items():
            on_event(f"  {name}: {why}")
        from workers.cluster import connected

        on_ray = any(b.uses_ray for b in conclave.pool.backends.values())
        if on_ray and (ray := connected()) is not None:
            on_event(ray)
        if config.gateway.preload:
            _preload(conclave, progress, on_event)
    except BaseException:
        conclave.close()
        raise
    return conclave


def _preload(conclave: Conclave, progress: bool, on_event: Callable[[str], None]) -> None:
    """The experts that fit, loaded; one line says how many, one each what was not."""
    t0 = time.perf_counter()
    outcome = conclave.pool.preload(progress=progress)
    loaded = [n for n, o in outcome.items() if o in ("loaded", "resident")]
    on_event(f"{len(loaded)} of {len(outcome)} experts loaded ({time.perf_counter() - t0:.0f} s)")
    for name, what in outcome.items():
        if name not in loaded:
            on_event(f"  {name}: {what} (loads on demand)")


def serve(
    config: ConclaveConfig,
    *,
    ensemble: bool = True,
    data: str = "skillmix",
    ray_serve: bool = False,
    on_event: Callable[[str], None] = print,
) -> None:
    """Serve the gateway on `config.gateway`'s host and port until interrupted: uvicorn in
    this process, or with `ray_serve` a Ray Serve application on the config's cluster
    (profiled here first, so its replicas find the profile cached). `on_event` hears the
    set-up's progress and where it serves. Raises `ConclaveError` when set-up fails."""
    settings = config.gateway
    keyed = bool(settings.keys())
    auth = "API keys required" if keyed else "no API keys configured"
    if not keyed and not _loopback(settings.host):
        auth += (
            f": anyone who can reach {settings.host} can use it and its experts; set "
            "gateway.api_keys or $CONCLAVE_API_KEYS"
        )
    if ray_serve:
        from orchestrator.gateway.ray_serve import run_on_ray_serve

        listen(settings.host, settings.port).close()  # Ray's proxy binds it: free now?
        # the replica builds its own facade and preloads there; here only the profile
        here = config.model_copy(update={"gateway": settings.model_copy(update={"preload": False})})
        prepare(here, ensemble=ensemble, data=data, progress=True, on_event=on_event).close()
        where = f"http://{settings.host}:{settings.port}"
        on_event(f"deploying on Ray Serve at {where} ({auth}); Ctrl-C stops")
        run_on_ray_serve(config, ensemble, data, settings.host, settings.port, True)
        return
    import uvicorn

    from orchestrator.gateway.app import create_app
    from orchestrator.gateway.draining import DrainingServer
    from workers.cluster import shutdown_ray

    sock = listen(settings.host, settings.port)
    where = f"http://{settings.host}:{sock.getsockname()[1]}"  # port 0: the one it got
    try:
        conclave = prepare(config, ensemble=ensemble, data=data, progress=True, on_event=on_event)
    except BaseException:
        sock.close()
        raise
    try:
        app = create_app(conclave, settings, ensemble=ensemble)
        uv = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            timeout_graceful_shutdown=30,
        )
        if settings.access_log:
            _print_access_log()
        on_event(f"serving on {where} ({auth}); Ctrl-C stops")
        DrainingServer(uv, app.state.batcher, settings.drain_s, on_event).run(sockets=[sock])
        on_event("stopped taking connections; closing the experts")
    finally:
        sock.close()
        conclave.close()
        shutdown_ray()  # a local Ray this process started goes with it
        on_event("stopped")


def _loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to any interface
        return False


def listen(host: str, port: int) -> socket.socket:
    """The gateway's socket, bound before the profiling and the model loads (minutes on a
    CPU): a port another process holds, or an address this machine does not have, is an
    error at once rather than after them. Port 0 takes a free one (`getsockname` says
    which). Raises `ConfigError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"gateway.host/port: cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "free the port, or pass another (--port; 0 takes any free one) or --host"
        ) from None
    sock.set_inheritable(True)
    return sock


def _print_access_log() -> None:
    """The access log's lines to stderr, with the time (once per process)."""
    import logging
    import sys

    from orchestrator.gateway.app import ACCESS_LOG

    log = logging.getLogger(ACCESS_LOG)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
