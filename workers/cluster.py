"""Connecting to Ray: a local cluster by default, or an existing one by address."""

from __future__ import annotations

import logging
import os
import threading

from orchestrator.config import ClusterConfig

log = logging.getLogger(__name__)
_lock = threading.Lock()


def ensure_ray(cluster: ClusterConfig) -> None:
    """Connect this process to Ray once: `cluster.address`, else RAY_ADDRESS, else local.

    A local Ray binds its dashboard to `cluster.dashboard_host` (127.0.0.1 by default).
    """
    import ray

    with _lock:
        if ray.is_initialized():
            return
        address = cluster.address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, object] = {
            "namespace": cluster.namespace,
            "ignore_reinit_error": True,
            "log_to_driver": False,
            # Ray's own "Started a local Ray instance" INFO line: ours below says where
            # it is (and its dashboard) in the product's log instead (--verbose: Ray's too)
            "logging_level": logging.INFO
            if os.environ.get("CONCLAVE_VERBOSE")
            else logging.WARNING,
        }
        if address is None:
            kwargs.update(
                num_cpus=cluster.num_cpus,
                include_dashboard=cluster.dashboard,
                dashboard_host=cluster.dashboard_host,
                dashboard_port=cluster.dashboard_port,
            )
        else:
            kwargs["address"] = address
        log.info("connecting to Ray at %s", address or "a new local cluster")
        # Ray warns at every start that token auth is on, with how to turn it off: the
        # line below says it is on (and how to get the token); turning it off is not advice
        # to print by default
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
        ctx = ray.init(**kwargs)
        dashboard = getattr(ctx, "dashboard_url", None) or None
        # Ray 2.60 binds its own ports on every interface whatever the node address (seen
        # with ss -ltnp), so its token auth is what keeps others out: say which it is
        if os.environ.get("RAY_AUTH_MODE", "token").lower() == "disabled":
            auth = (
                "token auth OFF (RAY_AUTH_MODE=disabled): Ray's ports listen on every "
                "interface, so use this only where no one else can reach the machine"
            )
            log.warning("Ray %s", auth)
        else:
            auth = "token auth on: `ray get-auth-token` prints the dashboard's token"
        _where["ray"] = (
            f"Ray: {address or 'a local cluster'} (namespace {cluster.namespace}, job "
            f"{job_id()}: `--attach {job_id()}` shares its experts); dashboard "
            + (f"http://{dashboard}" if dashboard else "off")
            + f"; {auth}"
        )
        log.info("%s", _where["ray"])


#: what `ensure_ray` connected to, for `connected`
_where: dict[str, str] = {}


def connected() -> str | None:
    """Where this process's Ray is (its address and dashboard URL), once `ensure_ray`
    connected it; None before."""
    return _where.get("ray")


def job_id() -> str:
    """This process's Ray job (its driver's id, unique on the cluster): the experts'
    actors are named after it, so two jobs on one cluster never share, nor kill, each
    other's actors."""
    import ray

    return str(ray.get_runtime_context().get_job_id())


def actor_name(expert: str, job: str) -> str:
    """The name of `expert`'s actor in job `job` (`ray list actors` shows it)."""
    return f"expert:{expert}@job-{job}"


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
