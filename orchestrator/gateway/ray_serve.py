"""The gateway as a Ray Serve application (`conclave serve --ray-serve`).

The same FastAPI app as `conclave serve`, built inside a Serve replica from the config by
the same `prepare`: Serve's HTTP proxy takes the requests, the replica's facade runs the
experts' Ray actors on the same cluster, and the application shows up in the Ray
dashboard's Serve tab with its replicas, requests and latencies. Use it on a cluster; on
one machine the plain uvicorn server is lighter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.config import ConclaveConfig, parse_config

if TYPE_CHECKING:
    from fastapi import FastAPI

APP_NAME = "conclave"


def build_gateway(config: dict[str, Any], ensemble: bool, data: str) -> FastAPI:
    """Runs in the replica: the prepared facade over the config's pool, and its app."""
    from orchestrator.gateway.app import create_app
    from orchestrator.gateway.serving import prepare

    cfg = parse_config(config)
    conclave = prepare(cfg, ensemble=ensemble, data=data)
    return create_app(conclave, cfg.gateway, ensemble=ensemble)


def gateway_application(
    config: ConclaveConfig, ensemble: bool = True, data: str = "skillmix", replicas: int = 1
) -> Any:
    """A Serve application to pass to `serve.run`."""
    from ray import serve

    settings = config.model_dump(mode="json")

    def builder() -> FastAPI:  # Serve calls a zero-argument function in the replica
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

    deployment: Any = ConclaveGateway  # Serve's decorators made the class a deployment
    return deployment.bind()


def run_on_ray_serve(
    config: ConclaveConfig, ensemble: bool, data: str, host: str, port: int, blocking: bool
) -> None:
    """Start Serve's proxy on host:port and deploy the gateway at the root path."""
    from ray import serve

    from workers.cluster import ensure_ray

    ensure_ray(config.cluster)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(
            gateway_application(config, ensemble, data),
            name=APP_NAME,
            route_prefix="/",
            blocking=blocking,
        )
    finally:
        if blocking:  # stopped (Ctrl-C, SIGTERM) or failed: take down what it deployed
            stop_ray_serve()


def stop_ray_serve() -> None:
    """Delete the gateway's Serve application (its replicas, and with them the experts'
    actors they own); shut Serve down too unless other applications still run on it."""
    from ray import serve

    serve.delete(APP_NAME, _blocking=True)
    if not serve.status().applications:
        serve.shutdown()
