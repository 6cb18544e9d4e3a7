"""Answers as server-sent events: OpenAI chat.completion.chunk events, then [DONE].

Three ways: `sse` sends an answer that is already whole in pieces; `token_stream` sends a
loaded vLLM expert's answer as its engine generates it (`ExpertPool.stream`);
`routed_stream` sends the routed model's answer, token by token where one call's text is
the answer (`Conclave.chat_stream`). Both start the response only once there is something
to send, so a refused request is still an HTTP status, not an error inside a 200 stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any, cast

from fastapi.responses import StreamingResponse

from orchestrator.gateway.batching import MicroBatcher
from orchestrator.gateway.completions import ensemble_item, passthrough_request, question
from orchestrator.gateway.errors import (
    GatewayError,
    as_gateway_error,
    ensemble_error,
    upstream_error,
)
from orchestrator.gateway.metrics import GatewayMetrics
from orchestrator.protocol import ChatRequest, CompletionUsage

if TYPE_CHECKING:
    from orchestrator.conclave import Conclave
    from workers.batch import GenerationResult


def _chunk_base(model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def _error_event(e: GatewayError) -> bytes:
    """An error after the status line has gone: OpenAI's error JSON as an event."""
    return _event({"error": e.body()})


def _chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return _event(base | {"choices": [choice]})


async def sse(model: str, result: dict[str, Any]) -> AsyncIterator[bytes]:
    """A ready answer as OpenAI chat.completion.chunk events: the role, the text in
    pieces, the finish reason with usage, then [DONE]."""
    base = _chunk_base(model) | {"id": result["id"]}
    yield _chunk(base, {"role": "assistant", "content": ""})
    text = result["choices"][0]["message"]["content"] or ""
    for i in range(0, len(text), 32):
        yield _chunk(base, {"content": text[i : i + 32]})
    tail = base | {
        "choices": [
            {"index": 0, "delta": {}, "finish_reason": result["choices"][0]["finish_reason"]}
        ],
        "usage": result["usage"],
    }
    if "conclave" in result:
        tail["conclave"] = result["conclave"]
    yield _event(tail)
    yield b"data: [DONE]\n\n"


async def token_stream(
    conclave: Conclave, body: ChatRequest, batcher: MicroBatcher, metrics: GatewayMetrics
) -> StreamingResponse:
    """OpenAI chunks as the engine generates the answer (`pool.stream` in a worker thread,
    handing each piece to this loop). The response starts with the engine's first event,
    as vLLM's server does, so a request the engine refuses (too long) is a 400, not a
    stream that fails. A client that leaves stops the stream; the engine drops the request."""
    base = _chunk_base(body.model)
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[Any] = asyncio.Queue()
    left = threading.Event()
    request = passthrough_request(body.model, body, base["id"])

    def produce() -> None:
        # a generator: closing it is what makes the engine drop the request
        events = cast(
            "Generator[str | GenerationResult, None, None]", conclave.pool.stream(request)
        )
        try:
            for event in events:
                loop.call_soon_threadsafe(pieces.put_nowait, event)
                if left.is_set():
                    break
        except Exception as exc:  # a bug below: still an error event, not a crash
            loop.call_soon_threadsafe(pieces.put_nowait, exc)
        finally:
            events.close()
            loop.call_soon_threadsafe(pieces.put_nowait, None)

    with batcher.counted():  # until the first event; the stream then counts itself
        try:
            loop.run_in_executor(batcher.threads, produce)
            first = await pieces.get()
        except BaseException:
            left.set()
            raise
    if getattr(first, "ok", True) is False:  # a failed result before any text
        err = upstream_error(body.model, first)
        if err.status == 400:  # refused: nothing was sent yet, so a plain 400
            raise err
    events = _token_sse(base, first, pieces, left, body.model, batcher, metrics)
    weakref.finalize(events, left.set)  # a response never started still frees the engine
    return StreamingResponse(events, media_type="text/event-stream")


async def _token_sse(
    base: dict[str, Any],
    first: Any,
    pieces: asyncio.Queue[Any],
    left: threading.Event,
    model: str,
    batcher: MicroBatcher,
    metrics: GatewayMetrics,
) -> AsyncIterator[bytes]:
    with batcher.counted():
        try:
            yield _chunk(base, {"role": "assistant", "content": ""})
            event = first
            while isinstance(event, str):  # the text, piece by piece
                yield _chunk(base, {"content": event})
                event = await pieces.get()
            if event is None:
                return
            if isinstance(event, Exception):
                yield _error_event(as_gateway_error(event))
                return
            if not event.ok:
                yield _error_event(upstream_error(model, event))
                return
            usage = CompletionUsage.of(event.prompt_tokens, event.completion_tokens)
            metrics.tokens(model, usage.total_tokens)
            finish = event.finish_reason or "stop"
            choice: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": finish}
            tail = base | {
                "choices": [choice],
                "usage": usage.model_dump(),
                "conclave": {"expert": model},
            }
            yield _event(tail)
            yield b"data: [DONE]\n\n"
        finally:
            left.set()  # the producer stops at its next piece; the engine drops the request


async def routed_stream(
    conclave: Conclave, body: ChatRequest, batcher: MicroBatcher, metrics: GatewayMetrics
) -> StreamingResponse:
    """The routed model's answer as OpenAI chunks: where one call's text is the answer
    (the expert asked alone, the common case, or the aggregator's synthesis) its tokens
    as the engine generates them (`Conclave.chat_stream`), else the whole answer once it
    is ready. The response starts with the first piece or the answer, so a question no
    expert could answer is still an HTTP status. Its id is the task's, so feedback can
    name it; the last chunk carries usage and the `conclave` block."""
    item = ensemble_item(conclave, question(body), body.seed, body.sampling())
    base = _chunk_base(body.model) | {"id": f"chatcmpl-{item.id}"}
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[Any] = asyncio.Queue()

    def produce() -> None:
        def sink(piece: str) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        try:
            out: Any = conclave.chat_stream(item, sink)
        except Exception as exc:  # the whole answer failed: its error is the last event
            out = exc
        loop.call_soon_threadsafe(pieces.put_nowait, _Done(out))

    with batcher.counted():  # until the first event; the stream then counts itself
        loop.run_in_executor(batcher.threads, produce)
        first = await pieces.get()
    if isinstance(first, _Done) and isinstance(first.answer, Exception):
        raise ensemble_error(first.answer)  # nothing sent yet: a plain HTTP status
    events = _routed_sse(base, first, pieces, body.model, batcher, metrics)
    return StreamingResponse(events, media_type="text/event-stream")


def unsaid(sent: str, text: str) -> str:
    """What a routed stream still owes once the answer is `text`, after sending `sent`:
    the rest of it; all of a vote's answer (nothing was streamed); or, where the streamed
    call's answer named no option and more experts were asked, the final answer after a
    blank line (what was sent cannot be taken back)."""
    return text[len(sent) :] if text.startswith(sent) else f"\n\n{text}"


class _Done:
    """The end of a routed stream: the answer (`ChatAnswer`) or the error that is it."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer


async def _routed_sse(
    base: dict[str, Any],
    first: Any,
    pieces: asyncio.Queue[Any],
    model: str,
    batcher: MicroBatcher,
    metrics: GatewayMetrics,
) -> AsyncIterator[bytes]:
    with batcher.counted():
        yield _chunk(base, {"role": "assistant", "content": ""})
        sent, event = "", first
        while isinstance(event, str):
            sent += event
            yield _chunk(base, {"content": event})
            event = await pieces.get()
        if isinstance(event.answer, Exception):
            yield _error_event(ensemble_error(event.answer))
            return
        answer = event.answer
        rest = unsaid(sent, answer.text)
        if rest:
            yield _chunk(base, {"content": rest})
        metrics.tokens(model, answer.usage.total_tokens)
        tail = base | {
            "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}],
            "usage": answer.usage.model_dump(),
            "conclave": answer.trace.model_dump(),
        }
        yield _event(tail)
        yield b"data: [DONE]\n\n"
