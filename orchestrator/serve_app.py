"""The gateway as a Ray Serve application (`conclave serve --ray-serve`).

The same FastAPI app as `conclave serve`, built inside a Serve replica from the config:
Serve's HTTP proxy takes the requests, the replica's facade runs the experts' Ray actors
on the same cluster, and the application shows up in the Ray dashboard's Serve tab with
its replicas, requests and latencies. Use it on a cluster; on one machine the plain
uvicorn server is lighter.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import ConclaveConfig, parse_config

APP_NAME = "conclave"


def build_gateway(config: dict[str, Any], ensemble: bool, data: str) -> Any:
    """Runs in the replica: the facade over the config's pool, its profile, the app."""
    from evals.datasets import eval_items
    from orchestrator.conclave import Conclave
    from orchestrator.gateway import create_app
    from orchestrator.profiling import ensure_profile

    cfg = parse_config(config)
    conclave = Conclave(cfg)
    if ensemble:
        ensure_profile(conclave, eval_items(data), data, cfg.resolved_cache_dir())
    if cfg.gateway.preload:
        conclave.pool.preload()
    return create_app(conclave, cfg.gateway, ensemble=ensemble)


def gateway_application(
    config: ConclaveConfig, ensemble: bool = True, data: str = "skillmix", replicas: int = 1
) -> Any:
    """A Serve application to pass to `serve.run`."""
    from ray import serve

    settings = config.model_dump(mode="json")

    def builder() -> Any:  # Serve calls a zero-argument function in the replica
        return build_gateway(settings, ensemble, data)

    @serve.deployment(
        name="gateway",
        num_replicas=replicas,
        # the replica only routes and waits: the experts' actors hold the CPUs and GPUs
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=config.gateway.max_queue,
    )
    @serve.ingress(builder)
    class ConclaveGateway:
        pass

    return ConclaveGateway.bind()


def run_on_ray_serve(
    config: ConclaveConfig, ensemble: bool, data: str, host: str, port: int, blocking: bool
) -> None:
    """Start Serve's proxy on host:port and deploy the gateway at the root path."""
    from ray import serve

    from workers.cluster import ensure_ray

    ensure_ray(config.cluster)
    serve.start(http_options={"host": host, "port": port})
    serve.run(
        gateway_application(config, ensemble, data),
        name=APP_NAME,
        route_prefix="/",
        blocking=blocking,
    )
