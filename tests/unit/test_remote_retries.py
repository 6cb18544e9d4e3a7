"""The litellm backend against a real HTTP server on 127.0.0.1 that misbehaves on cue."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from orchestrator.config import parse_config
from workers.batch import GenerationRequest
from workers.pool import ExpertPool


class Stub:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.active: Counter[str] = Counter()
        self.max_active: Counter[str] = Counter()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    async def chat(self, request: Request):
        body = await request.json()
        model, text = body["model"], body["messages"][-1]["content"]
        self.calls[text] += 1
        self.active[model] += 1
        self.max_active[model] = max(self.max_active[model], self.active[model])
        try:
            if model == "slow":
                await asyncio.sleep(3)
            elif model == "busy":
                await asyncio.sleep(0.05)
            elif model == "flaky" and self.calls[text] <= 2:
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            elif model == "broken":
                return JSONResponse({"error": {"message": "always down"}}, status_code=503)
            elif model == "bad":
                return JSONResponse({"error": {"message": "unknown model"}}, status_code=400)
            return {
                "id": "x",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"echo {text}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        finally:
            self.active[model] -= 1


@pytest.fixture(scope="module")
def stub():
    s = Stub()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(s.app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    s.url = f"http://127.0.0.1:{port}/v1"
    yield s
    server.should_exit = True
    thread.join(5)


def pool_for(stub, model, **backend):
    spec = {"type": "remote", "model": f"openai/{model}", "api_base": stub.url, "backoff_s": 0.01}
    spec.update(backend)
    return ExpertPool(parse_config({"pool": {"experts": [{"name": model, "backend": spec}]}}))


def ask(pool, name, texts):
    return pool.run(
        [
            GenerationRequest(item_id=t, expert=name, messages=[{"role": "user", "content": t}])
            for t in texts
        ]
    )


def test_answers_in_order_with_usage(stub):
    results = ask(pool_for(stub, "ok"), "ok", ["one", "two", "three"])
    assert [r.text for r in results] == ["echo one", "echo two", "echo three"]
    assert all(r.prompt_tokens == 3 and r.completion_tokens == 2 for r in results)


def test_retryable_failures_are_retried_with_backoff(stub):
    results = ask(pool_for(stub, "flaky", max_retries=2), "flaky", ["f1", "f2"])
    assert [r.text for r in results] == ["echo f1", "echo f2"]
    assert [r.attempts for r in results] == [3, 3]
    assert stub.calls["f1"] == 3


def test_retries_are_bounded(stub):
    results = ask(pool_for(stub, "broken", max_retries=1), "broken", ["b1"])
    assert results[0].error.type == "RemoteUnavailableError" and results[0].error.retryable
    assert results[0].attempts == 2 and stub.calls["b1"] == 2


def test_client_errors_are_not_retried(stub):
    results = ask(pool_for(stub, "bad", max_retries=3), "bad", ["x1"])
    assert results[0].error.type == "RemoteRequestError" and not results[0].error.retryable
    assert stub.calls["x1"] == 1


def test_timeout_is_reported_per_item(stub):
    results = ask(pool_for(stub, "slow", timeout_s=0.5, max_retries=0), "slow", ["s1"])
    assert results[0].error.type == "RemoteTimeoutError"


def test_concurrency_limit_is_respected(stub):
    results = ask(pool_for(stub, "busy", max_concurrency=2), "busy", [f"c{i}" for i in range(8)])
    assert all(r.ok for r in results)
    assert stub.max_active["busy"] == 2


def test_missing_api_key_variable_is_named(stub, monkeypatch):
    monkeypatch.delenv("CONCLAVE_TEST_KEY", raising=False)
    results = ask(pool_for(stub, "ok", api_key_env="CONCLAVE_TEST_KEY"), "ok", ["k"])
    assert results[0].error.type == "ConfigError"
    assert "CONCLAVE_TEST_KEY" in results[0].error.message


def test_an_eval_with_remote_experts_leaves_stderr_clean(tmp_path):
    """`conclave eval` with remote experts against a local OpenAI-compatible server (the
    scripted one): litellm's logging worker once printed hundreds of tracebacks ("cannot
    reuse already awaited coroutine", "Task was destroyed but it is pending!") between the
    progress bars though every call succeeded. Now stderr holds no traceback."""
    import os
    import subprocess
    import sys

    from evals.bench.pools import KEY_ENV, POOLS, SHARED_DATA, _config, _data
    from evals.bench.scripted import scripted_server
    from orchestrator.formats import load_file

    profile, test = _data(SHARED_DATA, 2, tmp_path)
    pool = POOLS["faulty"]  # errors and garbage too: retries must stay quiet
    items = load_file(profile) + load_file(test)
    with scripted_server(pool, items, 0) as url:
        cfg = _config(pool, url, 0, "ngram", tmp_path / "cache")
        path = tmp_path / "pool.json"
        path.write_text(cfg.model_dump_json(exclude_none=True))
        cmd = [sys.executable, "-m", "orchestrator.cli", "eval", "-c", str(path)]
        cmd += ["--data", str(test), "--profile-data", str(profile), "-s", "conclave"]
        cmd += ["-s", "majority", "--out", str(tmp_path / "run"), "--json", "--allow-errors"]
        env = {**os.environ, KEY_ENV: "scripted"}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Task was destroyed" not in res.stderr, res.stderr[
        -3000:
    ]
    assert "LoggingWorker" not in res.stderr


def test_litellm_logs_only_errors_unless_verbose(monkeypatch):
    import logging

    from workers import remote

    monkeypatch.delenv("CONCLAVE_VERBOSE", raising=False)
    logging.getLogger("LiteLLM").setLevel(logging.NOTSET)
    remote._litellm()
    assert logging.getLogger("LiteLLM").level == logging.ERROR
    monkeypatch.setenv("CONCLAVE_VERBOSE", "1")
    logging.getLogger("LiteLLM").setLevel(logging.NOTSET)
    lm = remote._litellm()
    assert logging.getLogger("LiteLLM").level == logging.NOTSET and not lm.suppress_debug_info
    lm.suppress_debug_info = True


def test_an_endpoint_that_keeps_failing_is_held_down_then_tried_again(stub):
    """`pool.down_after` requests in a row the endpoint does not answer, after their
    retries, hold the expert down: the next request fails at once without a call (as
    the endpoint's own error: retryable, and a miss for the monitor), and a router sees
    it down. After
    `pool.down_hold_s` one request tries it: still failing, it is held twice as long;
    answering, the hold is gone."""
    pool = pool_for(stub, "flaky", max_retries=0)  # each text fails its first 2 calls
    pool.holds.after = 5
    now = [0.0]
    pool.holds.clock = lambda: now[0]
    texts = [f"h{i}" for i in range(5)]
    first = ask(pool, "flaky", texts)
    assert [r.error.type for r in first] == ["RemoteUnavailableError"] * 5
    assert pool.unavailable() == {"flaky"}
    (held,) = ask(pool, "flaky", ["h0"])
    assert stub.calls["h0"] == 1  # not asked
    assert held.error.type == "RemoteUnavailableError" and held.error.retryable
    assert "not answering" in held.error.message and "again in 30 s" in held.error.message
    h1 = GenerationRequest(
        item_id="s", expert="flaky", messages=[{"role": "user", "content": "h1"}]
    )
    (streamed,) = pool.stream(h1)  # streamed, the same: no call
    assert streamed.error.type == "RemoteUnavailableError" and stub.calls["h1"] == 1
    now[0] = 30.0  # the hold is over: one more failure holds it again, for 60 s
    (trial,) = ask(pool, "flaky", ["h0"])
    assert trial.error.type == "RemoteUnavailableError" and stub.calls["h0"] == 2
    assert "again in 60 s" in pool.holds.why("flaky")
    now[0] = 90.0
    (back,) = ask(pool, "flaky", ["h0"])  # its third call: answered
    assert back.text == "echo h0" and pool.unavailable() == set()
    assert pool.holds.why("flaky") is None
