"""The gateway on loopback with real clients (openai, litellm, httpx) over fake experts."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import httpx
import pytest

from orchestrator.conclave import Conclave
from orchestrator.config import GatewaySettings, parse_config
from orchestrator.gateway import create_app

EXPERTS = [
    {"name": "alpha", "backend": {"type": "fake", "answer": "The answer is (A)."}},
    {"name": "beta", "backend": {"type": "fake", "answer": "The answer is (B)."}},
    {"name": "slow", "backend": {"type": "fake", "answer": "slow says hi", "generate_s": 0.5}},
    {"name": "short", "backend": {"type": "fake", "answer": "ok", "max_prompt_chars": 200}},
    {
        "name": "kw",
        "backend": {"type": "fake", "answer": "Keywords: arithmetic, math"},
        "roles": ["keywords"],
    },
]
Q = "What is 2 + 2? The options are: (A) 4 (B) 5"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def queue_depth(url: str) -> float:
    """The gateway's requests waiting or running, from its Prometheus metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(r"^conclave_gateway_queue_depth (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


class Served:
    def __init__(
        self,
        settings: GatewaySettings,
        profile: bool = True,
        ensemble: bool = True,
        experts: list[dict] | None = None,
        routing: dict | None = None,
        profile_limit: int = 1,
    ) -> None:
        import uvicorn

        from evals.datasets import eval_items

        pool = {"experts": experts or EXPERTS}
        cfg = parse_config({"pool": pool, "routing": {"embedder": "ngram", **(routing or {})}})
        self.conclave = Conclave(cfg)
        if profile:
            self.conclave.profile(eval_items("skillmix", limit=profile_limit), dataset="skillmix")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(self.conclave, settings, ensemble=ensemble)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            try:
                httpx.get(f"{self.url}/healthz", timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("gateway did not start")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.conclave.close()


@pytest.fixture(scope="module")
def gw():
    s = Served(GatewaySettings(batch_window_ms=20, max_body_bytes=4096))
    yield s
    s.close()


def test_openai_client_ensemble_and_passthrough(gw):
    import openai

    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    out = client.chat.completions.create(
        model="conclave", messages=[{"role": "user", "content": Q}]
    )
    assert out.choices[0].message.content.startswith("The answer is (")
    extra = out.model_extra["conclave"]
    assert extra["keywords"] == ["arithmetic", "math"] and len(extra["experts"]) >= 1
    assert extra["calls"] == 5 + len(extra["experts"])  # keyword samples, then experts
    assert out.usage is not None
    one = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": Q}])
    assert one.choices[0].message.content == "The answer is (A)."
    assert [m.id for m in client.models.list().data] == [
        "conclave",
        "alpha",
        "beta",
        "short",
        "slow",
    ]


def test_openai_client_streaming(gw):
    import openai

    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="beta", messages=[{"role": "user", "content": Q}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The answer is (B)."
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_routed_model_streams_its_lone_experts_words_and_its_id_takes_feedback(gw):
    """One expert asked alone (the common case): its words go out as its engine yields
    them, then the answer's usage and `conclave` block; the stream's id is the task's, so
    feedback can name it. The same question unstreamed gets the same text."""
    import openai

    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    msg = [{"role": "user", "content": Q}]
    whole = client.chat.completions.create(model="conclave", messages=msg)
    chunks = list(client.chat.completions.create(model="conclave", messages=msg, stream=True))
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    tail = chunks[-1].model_extra["conclave"]
    assert tail["experts"] == whole.model_extra["conclave"]["experts"]
    assert len(tail["experts"]) == 1  # asked alone: the fakes' skills are all alike
    assert pieces == ["The ", "answer ", "is ", "(A)."]  # the engine's pieces, not re-cut
    assert "".join(pieces) == whole.choices[0].message.content
    assert tail["choice"] == "A" and chunks[-1].usage == whole.usage
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-req-")
    fb = httpx.post(f"{gw.url}/v1/feedback", json={"id": chunks[0].id, "correct": True})
    assert fb.status_code == 200, fb.text


def test_a_routed_stream_owes_what_it_has_not_said():
    from orchestrator.gateway.streaming import unsaid

    assert unsaid("The answer ", "The answer is (A).") == "is (A)."  # the streamed call's
    assert unsaid("", "The answer is (B).") == "The answer is (B)."  # a vote: all of it
    assert unsaid("The answer is (A).", "The answer is (A).") == ""
    # the lone expert named no option and two more were asked: the vote's answer follows
    assert unsaid("I am not sure.", "The answer is (C).") == "\n\nThe answer is (C)."


def test_the_routed_model_streams_the_synthesis_when_an_aggregator_writes_the_answer():
    """Answers that split go to the aggregator LLM (here the served strategy is
    Mixture-of-Agents): its words are streamed, not the experts'."""
    import openai

    agg = "Alpha says A, beta says B; the answer is (A)."
    experts = [
        *EXPERTS[:2],
        EXPERTS[-1],  # the keyword model
        {"name": "agg", "backend": {"type": "fake", "answer": agg}, "roles": ["aggregator"]},
    ]
    s = Served(GatewaySettings(batch_window_ms=1), experts=experts, routing={"strategy": "moa"})
    try:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused")
        msg = [{"role": "user", "content": Q}]
        # (a model still loading answers in one piece: the first call loads the aggregator)
        whole = client.chat.completions.create(model="conclave", messages=msg)
        assert whole.choices[0].message.content == agg
        chunks = list(client.chat.completions.create(model="conclave", messages=msg, stream=True))
        pieces = [
            c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
        ]
        assert "".join(pieces) == agg
        assert len(pieces) == len(agg.split(" "))  # word by word, as the engine yields
        tail = chunks[-1].model_extra["conclave"]
        assert tail["aggregator"] == "agg" and set(tail["experts"]) == {"alpha", "beta"}
        assert tail["choice"] == "A"
    finally:
        s.close()


def test_streaming_from_a_continuous_engine_sends_each_piece_as_generated(gw):
    """An engine that batches continuously streams through the pool piece by piece; a
    failure mid-stream arrives as an OpenAI error event. (On `slow`: other tests of this
    module count alpha's requests and errors.)"""
    import openai

    from workers.batch import GenerationResult

    backend = gw.conclave.pool.backends["slow"]
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    msg = [{"role": "user", "content": Q}]
    client.chat.completions.create(model="slow", messages=msg)  # loaded
    words = ["The ", "answer ", "is (A)."]

    def stream(request):
        yield from words
        text = "".join(words)
        yield GenerationResult(
            item_id=request.item_id, expert="slow", text=text, prompt_tokens=7, completion_tokens=5
        )

    def broken(request):
        yield "The "
        raise RuntimeError("engine fell over")

    def refused(request):
        from orchestrator.errors import RequestRejectedError

        err = RequestRejectedError("this model's maximum context length is 512", expert="slow")
        yield GenerationResult.failed(request, err)

    backend.continuous_batching = True
    try:
        backend.stream = stream
        chunks = list(client.chat.completions.create(model="slow", messages=msg, stream=True))
        assert [c.choices[0].delta.content for c in chunks[1:4]] == words
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert chunks[-1].usage.completion_tokens == 5
        backend.stream = broken
        body = {"model": "slow", "messages": msg, "stream": True}
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r:
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        assert '"content": "The "' in lines[1] and "engine fell over" in lines[-1]
        # a request the engine refuses before running it: a 400 before any chunk
        backend.stream = refused
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400, r.text
        assert "refused the request" in r.json()["error"]["message"]
        assert "maximum context length" in r.json()["error"]["message"]
        assert gw.conclave.pool.backends["slow"].loaded  # the engine goes on
    finally:
        backend.continuous_batching = False
        del backend.stream


def test_litellm_pointed_at_the_gateway(gw):
    import litellm

    out = litellm.completion(
        model="openai/alpha",
        api_base=f"{gw.url}/v1",
        api_key="unused",
        messages=[{"role": "user", "content": Q}],
    )
    assert out.choices[0].message.content == "The answer is (A)."


def test_concurrent_requests_are_batched_per_expert(gw):
    """Ten requests within the window reach the fake engine as one batch."""
    import concurrent.futures as cf

    backend = gw.conclave.pool.backends["beta"]
    before = len(backend.calls)
    body = {"model": "beta", "messages": [{"role": "user", "content": Q}]}
    with cf.ThreadPoolExecutor(10) as ex:
        url = f"{gw.url}/v1/chat/completions"
        codes = list(
            ex.map(lambda _: httpx.post(url, json=body, timeout=10).status_code, range(10))
        )
    assert codes == [200] * 10
    sizes = [len(c) for c in backend.calls[before:]]
    assert sum(sizes) == 10 and max(sizes) > 1


def _body(**fields) -> bytes:
    return json.dumps(
        {"model": "alpha", "messages": [{"role": "user", "content": "x"}], **fields}
    ).encode()


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"model": "alpha"}', 422, "messages"),
        (b'{"model": "alpha", "messages": [{"role": "wizard", "content": "x"}]}', 422, "role"),
        (b'{"model": "alpha", "messages": [], "stream": 3}', 422, "messages"),
        (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404, "gpt-9"),
        (b'{"model": "conclave", "messages": [{"role": "system", "content": "x"}]}', 400, "user"),
        (_body(stream="yes"), 422, "stream"),
        (_body(max_tokens="9"), 422, "max_tokens"),
        (_body(n=3), 400, "'n'"),
        (b'{"model": "alpha", "messages": [{"role": "user"}]}', 422, "needs content"),
        (_body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 422, "content"),
        (_body(response_format={"type": "json_object"}), 400, "response_format"),
        (_body(stop=["a", "b", "c", "d", "e"]), 422, "stop"),
        (b"[1, 2]", 422, "body"),
        (
            b'{"model": "alpha", "messages": [{"role": "user", "content": "'
            + b"x" * 5000
            + b'"}]}',
            413,
            "limit",
        ),
    ],
)
def test_bad_requests_get_openai_errors(gw, body, status, text):
    r = httpx.post(
        f"{gw.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert text in err["message"] and err["type"]


def test_a_chunked_body_over_the_limit_gets_413(gw):
    def chunks():
        for _ in range(10):
            yield b'{"model": "alpha", "messages": [' + b" " * 1000

    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in r.request.headers  # sent chunked
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_route_models_health_and_metrics(gw):
    r = httpx.post(f"{gw.url}/v1/route", json={"question": Q})
    assert r.status_code == 200 and r.json()["keywords"] == ["arithmetic", "math"]
    for blank in ("", " \n\t"):  # nothing to route: refused, not planned for
        r = httpx.post(f"{gw.url}/v1/route", json={"question": blank})
        assert r.status_code == 422 and r.json()["error"]["param"] == "question", r.text
    assert "is blank: give the question to route" in r.json()["error"]["message"]
    assert httpx.get(f"{gw.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    assert httpx.get(f"{gw.url}/nope").status_code == 404
    text = httpx.get(f"{gw.url}/metrics").text
    httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "beta", "messages": [{"role": "user", "content": Q}]},
    )
    text = httpx.get(f"{gw.url}/metrics").text
    # by model: the served one a chat request named
    done = 'conclave_gateway_requests_total{model="beta",path="/v1/chat/completions",status="200"}'
    assert done in text
    assert 'conclave_gateway_request_seconds_bucket{le="0.005",model="beta"' in text
    assert "conclave_gateway_queue_depth" in text


def test_auth_overload_and_readiness():
    s = Served(GatewaySettings(api_keys=["k1"], max_queue=2, batch_window_ms=1), profile=False)
    try:
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
        url = f"{s.url}/v1/chat/completions"
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers={"authorization": "Bearer no"}).status_code == 401
        assert httpx.get(f"{s.url}/v1/models").status_code == 401
        assert httpx.get(f"{s.url}/healthz").status_code == 200  # health needs no key
        ok = {"authorization": "Bearer k1"}
        r = httpx.get(f"{s.url}/readyz", headers=ok)
        assert r.status_code == 503  # no profile: the ensemble cannot route yet
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(8) as ex:
            codes = list(
                ex.map(lambda _: httpx.post(url, json=body, headers=ok, timeout=10), range(8))
            )
        statuses = sorted(c.status_code for c in codes)
        assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}
        limited = next(c for c in codes if c.status_code == 429)
        assert limited.headers["retry-after"] == "1"
        assert limited.json()["error"]["code"] == "queue_full"
        ens = httpx.post(url, json={**body, "model": "conclave"}, headers=ok)
        assert ens.status_code == 503 and "profile" in ens.json()["error"]["message"]
    finally:
        s.close()


def test_live_expert_status_through_endpoint_sdk_and_cli(gw, tmp_path):
    import json

    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.sdk import ConclaveClient

    body = {"model": "alpha", "messages": [{"role": "user", "content": Q}]}
    for _ in range(3):
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=body).status_code == 200
    with ConclaveClient(gw.url) as c:
        live = {s.name: s for s in c.experts()}
    assert live["alpha"].loaded and live["alpha"].requests >= 3 and live["alpha"].errors == 0
    assert live["alpha"].mean_batch_seconds is not None
    assert set(live) == {e["name"] for e in EXPERTS}

    cfg = tmp_path / "conclave.json"
    cfg.write_text(json.dumps({"pool": {"experts": EXPERTS}}))
    res = CliRunner().invoke(
        app, ["experts", "list", "--config", str(cfg), "--gateway", gw.url, "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    rows = {r["name"]: r for r in out["experts"]}
    assert out["live"] == "serving" and rows["alpha"]["live"]["requests"] >= 3
    # the table, live, at 80 columns: whole names and headers
    res = CliRunner().invoke(
        app, ["experts", "list", "--config", str(cfg), "--gateway", gw.url], env={"COLUMNS": "80"}
    )
    assert res.exit_code == 0 and "…" not in res.output, res.output
    assert all(h in res.output for h in ("expert", "state", "requests", "errors", "batch s"))
    assert "alpha" in res.output and "loaded" in res.output
    # no gateway there: the static listing still works and says so
    res = CliRunner().invoke(
        app, ["experts", "list", "--config", str(cfg), "--gateway", "http://127.0.0.1:9"]
    )
    assert res.exit_code == 0 and "no gateway running" in res.output
    assert "state" not in res.output  # no live columns to fill


def test_sdk_clients_sync_and_async(gw):
    import asyncio

    from orchestrator.sdk import AsyncConclaveClient, ConclaveClient, GatewayClientError
    from orchestrator.types import RoutePlan

    with ConclaveClient(gw.url) as c:
        reply = c.chat(Q)
        assert reply.text.startswith("The answer is (") and reply.trace["keywords"]
        assert c.chat(Q, model="alpha").text == "The answer is (A)."
        plan = c.route(Q)
        # the served model's strategy ('conclave'): whom it asks first, with its estimates
        assert isinstance(plan, RoutePlan) and plan.strategy == "conclave"
        assert plan.keywords and 1 <= len(plan.experts) <= 2
        why = plan.explanation
        assert why is not None and set(why.estimates) >= set(plan.experts)
        assert why.budget == 3 and why.stages == [plan.experts]
        assert c.models()[0] == "conclave"
        with pytest.raises(GatewayClientError) as e:
            c.chat(Q, model="nobody")
        assert e.value.status == 404 and e.value.type == "not_found_error"

    async def go():
        async with AsyncConclaveClient(gw.url) as c:
            replies = await asyncio.gather(*(c.chat(Q, model="beta") for _ in range(3)))
            return [r.text for r in replies], await c.models()

    texts, models = asyncio.run(go())
    assert texts == ["The answer is (B)."] * 3 and "alpha" in models


def test_sdk_clients_say_where_no_gateway_answers_and_refuse_a_non_address():
    """Nothing listening: `GatewayUnreachableError` (retryable) naming the address and
    what to check, from both clients, instead of httpx's bare "Connection refused"."""
    import asyncio
    import socket

    from orchestrator.sdk import AsyncConclaveClient, ConclaveClient, GatewayUnreachableError

    with socket.socket() as s:  # a port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    want = rf"cannot reach the Conclave gateway at {url}/ \(.*is `conclave serve` running"
    with ConclaveClient(url) as c, pytest.raises(GatewayUnreachableError, match=want) as e:
        c.chat(Q)
    assert e.value.retryable and isinstance(e.value, ConnectionError)

    async def go():
        async with AsyncConclaveClient(url) as c:
            await c.models()

    with pytest.raises(GatewayUnreachableError, match=want):
        asyncio.run(go())
    with pytest.raises(ValueError, match="base_url '127.0.0.1:8000': give the gateway's"):
        ConclaveClient("127.0.0.1:8000")


def test_sdk_client_says_when_something_else_answers_at_the_address():
    """A 200 that is not JSON (another web server there) is a GatewayClientError saying
    so, not a JSONDecodeError from inside the client."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from orchestrator.sdk import ConclaveClient, GatewayClientError

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *_a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with ConclaveClient(f"http://127.0.0.1:{server.server_port}") as c:
            with pytest.raises(GatewayClientError, match="not a Conclave gateway's answer"):
                c.models()
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("continuous", "routed", "peak_expected"),
    [(False, None, 1), (True, None, 2), (False, 4, 2), (False, 1, 1)],
)
def test_continuous_batching_keys_run_several_batches_at_once(continuous, routed, peak_expected):
    """A key whose engine batches continuously takes a new batch while one runs (the
    engine merges them), and so does the routed model, up to `routed_batches` (a
    pipeline: one batch escalating does not hold back the next); any other key runs one
    batch at a time, the rest queued."""
    import asyncio

    from orchestrator.gateway.batching import MicroBatcher
    from orchestrator.protocol import ChatRequest

    active, peak = 0, 0
    second = threading.Event()
    lock = threading.Lock()

    def run_batch(key, requests, deliver=None):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        if requests[0].messages[0].content == "first":
            second.wait(timeout=1.0)  # released only if the second batch starts meanwhile
        else:
            second.set()
        with lock:
            active -= 1
        return [{"ok": r.messages[0].content} for r in requests]

    settings = GatewaySettings(batch_window_ms=1, routed_batches=routed or 4)
    ensemble = "m" if routed is not None else None
    batcher = MicroBatcher(run_batch, settings, lambda _k: continuous, ensemble_key=ensemble)

    def req(text):
        return ChatRequest(model="m", messages=[{"role": "user", "content": text}])

    async def main():
        first = asyncio.create_task(batcher.submit("m", req("first")))
        await asyncio.sleep(0.1)  # the first batch is running
        return await asyncio.gather(first, batcher.submit("m", req("second")))

    assert asyncio.run(main()) == [{"ok": "first"}, {"ok": "second"}]
    assert peak == peak_expected


def test_a_slow_lane_holds_no_slot_of_another_lane():
    """Routed questions queue by lane (the experts they are routed to): while every
    routed slot of one lane is taken by a batch that waits on a slow expert, a question
    routed elsewhere runs at once, and one in the busy lane waits for its turn."""
    import asyncio

    from orchestrator.gateway.batching import MicroBatcher
    from orchestrator.protocol import ChatRequest

    release = threading.Event()
    order: list[str] = []

    def run_batch(key, requests, deliver=None):
        text = requests[0].messages[0].content
        if text == "slow":
            release.wait(timeout=5)
        order.append(text)
        return [{"ok": r.messages[0].content} for r in requests]

    settings = GatewaySettings(batch_window_ms=1, routed_batches=1)
    batcher = MicroBatcher(run_batch, settings, ensemble_key="conclave")

    def req(text):
        return ChatRequest(model="conclave", messages=[{"role": "user", "content": text}])

    async def main():
        slow = asyncio.create_task(batcher.submit("conclave", req("slow"), "gemma"))
        await asyncio.sleep(0.1)  # the slow lane's one slot is taken
        queued = asyncio.create_task(batcher.submit("conclave", req("queued"), "gemma"))
        fast = await asyncio.wait_for(batcher.submit("conclave", req("fast"), "facts"), 2)
        assert not slow.done() and not queued.done()
        release.set()
        return fast, await slow, await queued

    assert asyncio.run(main()) == ({"ok": "fast"}, {"ok": "slow"}, {"ok": "queued"})
    assert order == ["fast", "slow", "queued"]


def test_a_request_the_expert_refuses_gets_400_and_its_batch_neighbours_answers(gw):
    """A prompt over the expert's context is the client's error (400, the engine's reason),
    not the expert's (502); requests batched with it are answered."""
    import concurrent.futures as cf

    def ask(text):
        body = {"model": "short", "messages": [{"role": "user", "content": text}]}
        return httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)

    def status():
        (me,) = [
            e for e in httpx.get(f"{gw.url}/v1/experts").json()["data"] if e["name"] == "short"
        ]
        return me["errors"], me["refused"]

    errors, refused = status()
    with cf.ThreadPoolExecutor(3) as ex:  # within one batch window
        long, short1, short2 = ex.map(ask, ["x" * 300, "hi", "hello"])
    # the client's mistake is counted apart: the expert did not fail
    assert status() == (errors, refused + 1)
    assert long.status_code == 400, long.text
    err = long.json()["error"]
    assert err["type"] == "invalid_request_error" and "at most 200" in err["message"]
    assert "'short' refused the request" in err["message"]
    assert short1.status_code == short2.status_code == 200, (short1.text, short2.text)
    assert short1.json()["choices"][0]["message"]["content"] == "ok"


def test_an_ensemble_whose_experts_all_fail_says_so():
    """The routed ensemble with nothing to vote on is an error, not an empty answer: 400
    when every chosen expert refused the question (too long), else 502 naming each."""
    limit = {"max_prompt_chars": 3000}
    experts = [dict(e, backend=e["backend"] | limit) for e in EXPERTS if e["name"] != "short"]
    s = Served(GatewaySettings(batch_window_ms=1), experts=experts)
    try:

        def ask(question, stream=False):
            body = {
                "model": "conclave",
                "messages": [{"role": "user", "content": question}],
                "stream": stream,
            }
            return httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=30)

        ok = ask(Q)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
        for stream in (False, True):  # a stream starts once the vote is done: a status too
            long = ask(Q + " and more" * 400, stream)
            assert long.status_code == 400, long.text
            msg = long.json()["error"]["message"]
            assert msg.startswith("the experts refused the question") and "at most 3000" in msg
        streamed = ask(Q, stream=True)
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
        events = [
            json.loads(line[6:])
            for line in streamed.text.splitlines()
            if line.startswith("data: {")
        ]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
        assert text == ok.json()["choices"][0]["message"]["content"]
        assert events[-1]["conclave"]["experts"] and "total_tokens" in events[-1]["usage"]
    finally:
        s.close()


def test_feedback_on_a_routed_answer_teaches_the_router_without_free_agents(gw):
    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "conclave", "messages": [{"role": "user", "content": Q}]},
        timeout=30,
    )
    assert r.status_code == 200
    reply = r.json()
    asked = reply["conclave"]["experts"]
    before = len(gw.conclave.questions)
    fb = httpx.post(
        f"{gw.url}/v1/feedback", json={"id": reply["id"], "correct": True, "answer": "A"}
    )
    assert fb.status_code == 200, fb.text
    assert fb.json()["agents_scored"] == len(set(asked)) >= 1
    assert len(gw.conclave.questions) == before + 1
    for e in set(asked):
        assert gw.conclave.profiles.profiles[e].provenance[-1].split == "feedback"
    unknown = httpx.post(f"{gw.url}/v1/feedback", json={"id": "chatcmpl-nope", "correct": True})
    assert unknown.status_code == 404 and "no recent answer" in unknown.text


ECHO = {
    "name": "echo",
    "backend": {"type": "fake", "answer": "echo sampling {sampling} prompt {prompt}"},
}


def test_an_expert_that_cannot_load_is_shown_down_and_fails_fast_until_its_hold_ends(tmp_path):
    """Over HTTP: a request for an expert whose model fails to load gets the load's error
    (502); asked again within pool.down_hold_s it fails at once, no load tried, saying
    when it is tried again; `/v1/experts` and `conclave experts list` say why it is down."""
    import json

    from typer.testing import CliRunner

    from orchestrator.cli import app

    broken = {"name": "broken", "backend": {"type": "fake", "fail_load": True}}
    s = Served(GatewaySettings(), profile=False, ensemble=False, experts=[EXPERTS[0], broken])
    try:
        body = {"model": "broken", "messages": [{"role": "user", "content": Q}]}
        first = httpx.post(f"{s.url}/v1/chat/completions", json=body)
        assert first.status_code == 502 and "does not exist" in first.json()["error"]["message"]
        again = httpx.post(f"{s.url}/v1/chat/completions", json=body)
        msg = again.json()["error"]["message"]
        assert again.status_code == 502 and "held down" in msg and "tried again in" in msg
        assert s.conclave.pool.backends["broken"].load_tries == 1
        live = {e["name"]: e for e in httpx.get(f"{s.url}/v1/experts").json()["data"]}
        assert "failed to load" in live["broken"]["down"] and live["alpha"]["down"] is None
        ok = httpx.post(f"{s.url}/v1/chat/completions", json={**body, "model": "alpha"})
        assert ok.status_code == 200

        cfg = tmp_path / "conclave.json"
        cfg.write_text(json.dumps({"pool": {"experts": [EXPERTS[0], broken]}}))
        res = CliRunner().invoke(
            app,
            ["experts", "list", "--config", str(cfg), "--gateway", s.url],
            env={"COLUMNS": "80"},
        )
        assert res.exit_code == 0, res.output
        assert "down" in res.output and "broken is down:" in res.output
    finally:
        s.close()


@pytest.fixture(scope="module")
def echo_gw():
    s = Served(
        GatewaySettings(batch_window_ms=5),
        experts=[*EXPERTS[:2], ECHO, EXPERTS[-1]],
        routing={"fallback": "echo"},
        profile_limit=8,
    )
    yield s
    s.close()


def test_every_openai_request_form_and_parameter_is_honoured_or_refused(echo_gw, gw):
    """Text content parts, an assistant tool-call turn with no content, and each sampling
    parameter reach the expert (the echo expert writes back what it was sent); what the
    gateway cannot honour is a 400 naming the parameter, from the official client."""
    import openai

    client = openai.OpenAI(base_url=f"{echo_gw.url}/v1", api_key="unused", max_retries=0)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "tool says 4"},
        {"role": "user", "content": "and then?"},
    ]
    out = client.chat.completions.create(
        model="echo",
        messages=messages,
        temperature=0.3,
        top_p=0.9,
        max_completion_tokens=400,
        seed=7,
        n=1,
    )
    text = out.choices[0].message.content
    sent = json.loads(text.split("sampling ", 1)[1].split(" prompt ", 1)[0])
    assert sent == {"temperature": 0.3, "top_p": 0.9, "max_tokens": 400, "seed": 7}
    assert "part one\npart two" in text and "tool says 4" in text and "and then?" in text
    # max_tokens and stop act on the answer, as an engine's would
    cut = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "x"}], max_tokens=2
    )
    assert (
        cut.choices[0].message.content == "echo sampling"
        and cut.choices[0].finish_reason == "length"
    )
    stopped = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "x"}], stop=["NEVER", "sampling"]
    )
    assert stopped.choices[0].message.content == "echo "  # the first stop string found
    for kwargs, name in [
        ({"n": 3}, "n"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                "tool_choice": "required",
            },
            "tools",
        ),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "x"}], **kwargs
            )
        assert e.value.body["param"] == name and "not supported" in e.value.body["message"]
    # the routed model passes max_tokens to its experts too, and routes the same question
    # the same way whatever the request (its draw is seeded by the question and seed)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    routed = [
        client.chat.completions.create(model="conclave", messages=[{"role": "user", "content": Q}])
        for _ in range(3)
    ]
    assert len({tuple(r.model_extra["conclave"]["experts"]) for r in routed}) == 1


def test_an_agent_frameworks_openai_client_and_litellm_send_the_same_forms(echo_gw):
    import litellm
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="echo",
        base_url=f"{echo_gw.url}/v1",
        api_key="unused",
        max_tokens=50,
        temperature=0.2,
        max_retries=0,
    )
    history = [
        SystemMessage(content="be brief"),
        HumanMessage(content=[{"type": "text", "text": "what is 2+2?"}]),
        AIMessage(content="", tool_calls=[{"id": "c1", "name": "add", "args": {"a": 2, "b": 2}}]),
        ToolMessage(content="4", tool_call_id="c1"),
        HumanMessage(content="so?"),
    ]
    reply = llm.invoke(history)
    assert "what is 2+2?" in reply.content and '"temperature": 0.2' in reply.content
    out = litellm.completion(
        model="openai/echo",
        api_base=f"{echo_gw.url}/v1",
        api_key="unused",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
        max_tokens=20,
        seed=3,
    )
    assert '"seed": 3' in out.choices[0].message.content


@pytest.mark.parametrize(
    ("question", "scope", "why"),
    [
        ("Why is the sky blue?", None, "free-form"),
        ("Hello", None, "free-form"),
        # a scope no question reaches: whatever is asked is unlike the validation set
        ("Which protein folds fastest? The options are: (A) actin (B) keratin", 1.01, "unlike"),
    ],
)
def test_out_of_scope_questions_get_the_fallback_experts_own_answer(
    echo_gw, question, scope, why, monkeypatch
):
    if scope is not None:
        monkeypatch.setattr(echo_gw.conclave.state, "scope", scope)
    r = httpx.post(
        f"{echo_gw.url}/v1/chat/completions",
        json={"model": "conclave", "messages": [{"role": "user", "content": question}]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    trace = body["conclave"]
    assert trace["experts"] == ["echo"] and trace["out_of_scope"].startswith(why)
    assert trace["confidence"] == 0.0
    # the fallback's own words, not "The answer is (X)." made up from them; a free-form
    # question is asked as it is, not wrapped in the multiple-choice instruction
    content = body["choices"][0]["message"]["content"]
    assert content.startswith("echo sampling")
    assert ("multiple choice" in content) == (why != "free-form")
    plan = httpx.post(f"{echo_gw.url}/v1/route", json={"question": question}).json()
    assert plan["experts"] == ["echo"] and plan["explanation"]["out_of_scope"].startswith(why)


def test_in_scope_questions_are_routed_as_before(echo_gw):
    from evals.datasets import eval_items

    item = eval_items("skillmix", limit=1)[0]  # a validation question: in scope by definition
    plan = httpx.post(f"{echo_gw.url}/v1/route", json={"question": item.question}).json()
    why = plan["explanation"]
    assert why["out_of_scope"] is None and why["nearest"] > 0.99 and plan["experts"] != ["echo"]
