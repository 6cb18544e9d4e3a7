"""One bad request never costs the others: invalid requests mixed into batches of valid
ones (routed and passthrough, streamed and not) fail alone, and every valid request gets
the answer it gets alone. Real HTTP against the real app, over fake experts."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config import GatewaySettings
from tests.unit.test_gateway import Q, Served

#: requests that must succeed: (model, question, stream)
VALID = {
    "routed": ("conclave", Q, False),
    "routed-stream": ("conclave", Q, True),
    "expert": ("alpha", Q, False),
    "expert-stream": ("alpha", Q, True),
}
#: requests that must fail alone, with the status and code they get
INVALID = {
    "empty": (("conclave", "", False), 400, "empty_question"),
    "blank": (("conclave", "  \n\t ", False), 400, "empty_question"),
    "blank-stream": (("conclave", " ", True), 400, "empty_question"),
    "too-long": (("short", "word " * 100, False), 400, "invalid_request"),
}


@pytest.fixture(scope="module")
def wide():
    # a window wide enough that a burst of requests lands in one batch per model
    s = Served(GatewaySettings(batch_window_ms=40))
    yield s
    s.close()


async def _send(client: httpx.AsyncClient, url: str, model: str, text: str, stream: bool):
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    r = await client.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    if r.status_code != 200:
        return r.status_code, r.json()["error"]["code"]
    if not stream:
        return 200, r.json()["choices"][0]["message"]["content"]
    events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
    return 200, "".join(e["choices"][0]["delta"].get("content") or "" for e in events)


async def _burst(url: str, requests: list[tuple[str, str, bool]]):
    async with httpx.AsyncClient() as client:
        return await asyncio.gather(*(_send(client, url, *r) for r in requests))


def test_an_empty_question_is_a_400_naming_the_field_and_its_batch_is_answered(wide):
    good = [VALID["routed"]] * 6
    for _ in range(3):
        out = asyncio.run(_burst(wide.url, [*good[:3], INVALID["empty"][0], *good[3:]]))
        assert [s for s, _ in out] == [200, 200, 200, 400, 200, 200, 200]
    r = httpx.post(
        f"{wide.url}/v1/chat/completions",
        json={"model": "conclave", "messages": [{"role": "user", "content": ""}]},
    )
    assert r.json()["error"]["param"] == "messages[0].content"


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(sorted(VALID)).map(lambda k: ("valid", k)),
            st.sampled_from(sorted(INVALID)).map(lambda k: ("invalid", k)),
        ),
        min_size=2,
        max_size=10,
    )
)
def test_invalid_requests_in_a_batch_fail_alone(wide, mix):
    alone = {k: asyncio.run(_burst(wide.url, [v]))[0] for k, v in VALID.items()}
    assert all(status == 200 for status, _ in alone.values())
    sent = [VALID[k] if kind == "valid" else INVALID[k][0] for kind, k in mix]
    for (kind, k), got in zip(mix, asyncio.run(_burst(wide.url, sent)), strict=True):
        if kind == "valid":
            assert got == alone[k], (k, got)
        else:
            assert got == INVALID[k][1:], (k, got)


def test_a_batch_that_fails_as_a_whole_is_answered_request_by_request():
    """Should a request break what its batch shares (a bug's exception for the whole
    batch), the batch runs again one request at a time: the failure is that request's."""
    from orchestrator.gateway.batching import MicroBatcher
    from orchestrator.gateway.errors import GatewayError
    from orchestrator.protocol import ChatRequest

    calls: list[int] = []

    def run_batch(key, requests, deliver=None):
        calls.append(len(requests))
        if any(r.messages[0].content == "poison" for r in requests):
            raise RuntimeError("the batch broke")
        return [{"ok": r.messages[0].content} for r in requests]

    batcher = MicroBatcher(run_batch, GatewaySettings(batch_window_ms=20))

    def req(text):
        return ChatRequest(model="m", messages=[{"role": "user", "content": text}])

    async def main():
        texts = ["a", "b", "poison", "c"]
        return await asyncio.gather(
            *(batcher.submit("m", req(t)) for t in texts), return_exceptions=True
        )

    a, b, poison, c = asyncio.run(main())
    assert (a, b, c) == ({"ok": "a"}, {"ok": "b"}, {"ok": "c"})
    assert isinstance(poison, GatewayError) and "the batch broke" in poison.message
    assert calls == [4, 1, 1, 1, 1]  # together once, then each alone


def test_a_request_answered_early_returns_while_its_batch_runs_on():
    """`deliver(i, outcome)`: a batch that settles one request early (a routed question
    one expert answered) answers its caller at once; the rest wait for the batch, and an
    answer delivered early is not replaced by the batch's own. Should the batch then fail
    as a whole, only the requests not answered yet run again alone."""
    from orchestrator.gateway.batching import MicroBatcher
    from orchestrator.gateway.errors import GatewayError
    from orchestrator.protocol import ChatRequest

    release = threading.Event()
    calls: list[list[str]] = []

    def run_batch(key, requests, deliver=None):
        texts = [r.messages[0].content for r in requests]
        calls.append(texts)
        if len(texts) > 1:
            deliver(0, {"ok": texts[0], "early": True})
            release.wait(timeout=5)
        if "poison" in texts:
            raise RuntimeError("the batch broke")
        return [{"ok": t, "early": False} for t in texts]

    batcher = MicroBatcher(run_batch, GatewaySettings(batch_window_ms=20))

    def req(text):
        return ChatRequest(model="m", messages=[{"role": "user", "content": text}])

    async def main(texts):
        jobs = [asyncio.create_task(batcher.submit("m", req(t))) for t in texts]
        first = await asyncio.wait_for(jobs[0], 2)  # while the batch still waits
        assert not any(j.done() for j in jobs[1:])
        release.set()
        return [first, *await asyncio.gather(*jobs[1:], return_exceptions=True)]

    got = asyncio.run(main(["a", "b"]))
    assert got == [{"ok": "a", "early": True}, {"ok": "b", "early": False}]
    release.clear()
    calls.clear()
    a, poison, c = asyncio.run(main(["a", "poison", "c"]))
    assert a == {"ok": "a", "early": True} and c == {"ok": "c", "early": False}
    assert isinstance(poison, GatewayError) and "the batch broke" in poison.message
    assert calls == [["a", "poison", "c"], ["poison"], ["c"]]  # "a" was answered


def test_a_routed_question_settled_first_is_answered_before_its_neighbour_escalates():
    """Over HTTP, two routed questions in one batch: the one its first expert settles
    comes back while the other, escalated to the expert 'slow', is still being answered
    ('slow' is held until the first answer is in); before, both waited for the batch's
    last stage."""
    from orchestrator.strategies import STRATEGIES
    from tests.unit.test_conclave_strategy import staged

    # alpha first; a question saying 'hard' also asks 'slow'
    more = lambda i, it, a: ["slow"] if "hard" in it.question and len(a) == 1 else []  # noqa: E731
    staged("escalate-hard", "alpha", more)
    served = Served(GatewaySettings(batch_window_ms=100), routing={"strategy": "escalate-hard"})
    first_in = threading.Event()
    slow = served.conclave.pool.backends["slow"]
    generate = slow.generate

    def held(requests):  # 'slow' answers once the settled question's answer is in
        held.waited = first_in.wait(timeout=5)
        return generate(requests)

    slow.generate = held
    try:

        async def ask(client, text):
            body = {"model": "conclave", "messages": [{"role": "user", "content": text}]}
            r = await client.post(f"{served.url}/v1/chat/completions", json=body, timeout=30)
            if text == Q:
                first_in.set()
            return r.status_code, r.json()["conclave"]["experts"]

        async def both():
            async with httpx.AsyncClient() as client:
                return await asyncio.gather(ask(client, Q), ask(client, f"hard: {Q}"))

        easy, hard = asyncio.run(both())
    finally:
        served.close()
        STRATEGIES.remove("escalate-hard")
    assert easy == (200, ["alpha"]) and hard == (200, ["alpha", "slow"])  # one batch
    assert held.waited  # the settled answer came back while 'slow' was still held
