"""The gateway as a Ray Serve application on a real local Ray cluster, over HTTP."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from orchestrator.config import parse_config

pytestmark = pytest.mark.real

EXPERTS = [
    {"name": "alpha", "backend": {"type": "fake", "answer": "The answer is (A)."}},
    {"name": "beta", "backend": {"type": "fake", "answer": "The answer is (B)."}},
    {
        "name": "kw",
        "backend": {"type": "fake", "answer": "Keywords: arithmetic, math"},
        "roles": ["keywords"],
    },
]


def test_gateway_runs_as_a_ray_serve_application(ray_cluster, tmp_path):
    from ray import serve

    from orchestrator.gateway.ray_serve import APP_NAME, run_on_ray_serve, stop_ray_serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = parse_config(
        {
            "pool": {"experts": EXPERTS},
            "routing": {"embedder": "ngram"},
            "cache_dir": str(tmp_path),
            "gateway": {"api_keys": ["secret"]},
        }
    )
    run_on_ray_serve(cfg, True, "skillmix", "127.0.0.1", port, blocking=False)
    try:
        base = f"http://127.0.0.1:{port}"
        auth = {"authorization": "Bearer secret"}
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the Serve replica never became ready"
            time.sleep(1)
        assert serve.status().applications[APP_NAME].status == "RUNNING"
        assert httpx.get(f"{base}/v1/models").status_code == 401  # the app's own auth
        ids = [m["id"] for m in httpx.get(f"{base}/v1/models", headers=auth).json()["data"]]
        assert ids[0] == "conclave" and "alpha" in ids
        body = {"model": "conclave", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
        r = httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["conclave"]["keywords"] == ["arithmetic", "math"]
        r = httpx.post(f"{base}/v1/chat/completions", json={**body, "model": "beta"}, headers=auth)
        assert r.json()["choices"][0]["message"]["content"] == "The answer is (B)."
    finally:
        stop_ray_serve()
    # nothing it deployed is left: no replica, no proxy answering, no Serve controller
    left = {a["name"] for a in ray_cluster.util.list_named_actors(all_namespaces=True)}
    assert not any("SERVE" in n or APP_NAME in n for n in left), left
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/readyz", timeout=5)
