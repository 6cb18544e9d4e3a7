"""Shared real-path fixtures: tiny models built by the tests, one local Ray for the session."""

from __future__ import annotations

import pytest

from agents.zoo.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "llama-a": build_tiny_model(root / "llama-a", seed=1),
        "llama-b": build_tiny_model(root / "llama-b", seed=2),
        "moe": build_tiny_model(root / "moe", seed=3, arch="mixtral"),
    }


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray started the way the pool starts one, with its dashboard on a free port."""
    import socket

    import ray

    from orchestrator.config import ClusterConfig
    from workers.cluster import ensure_ray

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    ensure_ray(ClusterConfig(num_cpus=2, dashboard_port=port))
    yield ray
    ray.shutdown()
