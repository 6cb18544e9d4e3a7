"""The gateway's lifecycle on loopback: a client that leaves frees its queued work,
shutdown drains in-flight requests, and passthrough serves without a profile."""

from __future__ import annotations

import time

import httpx
import pytest

from orchestrator.config import GatewaySettings
from tests.unit.test_gateway import Q, Served, queue_depth


def _items_run(backend) -> int:  # noqa: ANN001
    return sum(len(c) for c in backend.calls)


def test_a_client_that_leaves_while_queued_frees_its_work():
    """Requests queued behind a running batch are dropped when their client disconnects,
    streaming or not; the others are answered. (The two leave while the first batch is
    under way: it is waited for, and takes 2 s, so a loaded machine cannot let it end
    first, as a fixed 0.15 s wait behind a 0.5 s batch once did in CI.)"""
    import concurrent.futures as cf

    slow_expert = {"name": "slow", "backend": {"type": "fake", "answer": "hi", "generate_s": 2}}
    s = Served(
        GatewaySettings(batch_window_ms=1), profile=False, ensemble=False, experts=[slow_expert]
    )
    try:
        url = f"{s.url}/v1/chat/completions"
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
        slow = s.conclave.pool.backends["slow"]
        with cf.ThreadPoolExecutor(2) as ex:
            first = ex.submit(httpx.post, url, json=body, timeout=30)
            deadline = time.monotonic() + 20
            while not slow.generating and time.monotonic() < deadline:
                time.sleep(0.01)
            assert slow.generating == 1  # the first batch is under way
            with pytest.raises(httpx.ReadTimeout):  # a stream that gives up while queued
                with httpx.stream("POST", url, json={**body, "stream": True}, timeout=0.1) as r:
                    r.read()
            with pytest.raises(httpx.ReadTimeout):  # a plain request that gives up
                httpx.post(url, json=body, timeout=0.1)
            assert slow.generating == 1 and not slow.calls  # they left while it ran
            last = ex.submit(httpx.post, url, json=body, timeout=30)
            assert first.result().status_code == 200 and last.result().status_code == 200
        assert _items_run(slow) == 2  # the two that left were never generated
    finally:
        s.close()


def test_graceful_shutdown_finishes_in_flight_requests_and_refuses_new_ones():
    import concurrent.futures as cf

    s = Served(GatewaySettings(batch_window_ms=1), profile=False, ensemble=False)
    url = f"{s.url}/v1/chat/completions"
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    with cf.ThreadPoolExecutor(3) as ex:
        in_flight = [ex.submit(httpx.post, url, json=body, timeout=10) for _ in range(3)]
        deadline = time.monotonic() + 20  # all three in (a fixed wait can be too short)
        while queue_depth(s.url) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        s.server.should_exit = True  # what SIGINT/SIGTERM do
        time.sleep(0.1)
        with pytest.raises(httpx.ConnectError):
            httpx.post(url, json=body, timeout=2)
        replies = [f.result() for f in in_flight]
    assert [r.status_code for r in replies] == [200] * 3
    assert all(r.json()["choices"][0]["message"]["content"] == "slow says hi" for r in replies)
    s.thread.join(timeout=10)
    assert not s.thread.is_alive() and s.conclave.pool.backends["slow"].loaded
    s.conclave.close()


def test_passthrough_only_is_ready_without_a_profile():
    s = Served(GatewaySettings(), profile=False, ensemble=False)
    try:
        assert httpx.get(f"{s.url}/readyz").status_code == 200
        ids = [m["id"] for m in httpx.get(f"{s.url}/v1/models").json()["data"]]
        assert "conclave" not in ids and "alpha" in ids
        body = {"model": "conclave", "messages": [{"role": "user", "content": Q}]}
        r = httpx.post(f"{s.url}/v1/chat/completions", json=body)
        assert r.status_code == 404 and "alpha" in r.json()["error"]["message"]
        r = httpx.post(f"{s.url}/v1/route", json={"question": Q})
        assert r.status_code == 404 and "passthrough-only" in r.json()["error"]["message"]
        r = httpx.post(f"{s.url}/v1/chat/completions", json={**body, "model": "alpha"})
        assert r.json()["choices"][0]["message"]["content"] == "The answer is (A)."
    finally:
        s.close()


def test_sigterm_drains_in_flight_work_with_the_socket_open_then_exits(tmp_path):
    """`conclave serve` as a process: on SIGTERM it keeps its socket open while the
    request in flight finishes, answering /readyz and new work 503 meanwhile (a load
    balancer sees the drain), then exits 0 and says so."""
    import concurrent.futures as cf
    import json
    import signal
    import subprocess
    import sys

    from tests.unit.test_gateway import _free_port

    slow = {"name": "slow", "backend": {"type": "fake", "answer": "done", "generate_s": 4.0}}
    cfg = tmp_path / "conclave.json"
    cfg.write_text(json.dumps({"pool": {"experts": [slow]}, "cache_dir": str(tmp_path)}))
    port = _free_port()
    cmd = [sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(cfg)]
    cmd += ["--port", str(port), "--passthrough-only"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
        with cf.ThreadPoolExecutor(1) as ex:
            in_flight = ex.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=20)
            # SIGTERM once it is in (it takes 4 s), then wait for the drain to begin: what
            # follows must happen while it is in flight, whatever the machine's load
            deadline = time.monotonic() + 10
            while queue_depth(url) < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                ready = httpx.get(f"{url}/readyz", timeout=5)
                if ready.status_code == 503:
                    break
                time.sleep(0.01)
            assert (ready.status_code, ready.json()["status"]) == (503, "shutting down")
            late = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=5)
            assert late.status_code == 503 and late.json()["error"]["code"]
            reply = in_flight.result()
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "ready: taking connections" in out
        assert "draining: 1 requests in flight" in out and out.rstrip().endswith("stopped")
        # the access log: a line per request, the chat one with its model
        assert '"POST /v1/chat/completions" 200' in out and "model=slow" in out
        assert '"GET /readyz" 503' in out
    finally:
        if proc.poll() is None:
            proc.kill()
