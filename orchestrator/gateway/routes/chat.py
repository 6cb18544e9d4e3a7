"""POST /v1/chat/completions: model 'conclave' (the routed ensemble) or an expert's name.

A request joins its model's micro-batch; with `stream: true` a loaded vLLM expert streams
token by token, the routed model streams the tokens of the call whose text is its answer
(the expert it asked alone, or the synthesis), any other model sends its whole answer as
chunks once it is ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from orchestrator.gateway.completions import question
from orchestrator.gateway.deps import ENSEMBLE, Served
from orchestrator.gateway.errors import GatewayError
from orchestrator.gateway.streaming import routed_stream, sse, token_stream
from orchestrator.protocol import ChatRequest

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat(body: ChatRequest, request: Request, gw: Served) -> dict[str, Any] | Response:
    if (refused := body.unsupported()) is not None:
        name, value = refused
        raise GatewayError(
            400,
            f"{name!r} is not supported by this gateway (it was set to {value!r}); remove it "
            "or use a provider that supports it",
            code="unsupported_parameter",
            param=name,
        )
    if body.model not in gw.served:
        raise GatewayError(
            404,
            f"unknown model {body.model!r}; GET /v1/models lists the models served: "
            + ", ".join(gw.served),
            "not_found_error",
            "model_not_found",
            param="model",
        )
    request.state.model = body.model  # the metrics' and access log's model label
    if body.model == ENSEMBLE:
        question(body)  # 400 before queueing
        gw.check_routing()
    if body.stream and body.model == ENSEMBLE:
        # the lone expert's (or the synthesis's) tokens as they come
        gw.batcher.admit()
        return await routed_stream(gw.conclave, body, gw.batcher, gw.metrics)
    if body.stream and gw.streams_live(body.model):
        # token by token from the engine's running batch
        gw.batcher.admit()
        return await token_stream(gw.conclave, body, gw.batcher, gw.metrics)
    lane = await gw.lane(body) if body.model == ENSEMBLE else ""
    result = await _unless_disconnected(request, gw.batcher.submit(body.model, body, lane))
    gw.metrics.tokens(body.model, result["usage"]["total_tokens"])
    if body.stream:
        # an answer that comes in one piece (the routed ensemble votes on whole answers;
        # an expert still loading answers through its batch): the stream starts once it
        # is ready, so a failure is an HTTP status that clients retry on, as for a
        # request that does not stream, not an error event in a 200 stream
        return StreamingResponse(sse(body.model, result), media_type="text/event-stream")
    return result


async def _unless_disconnected(request: Request, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Await `work`, cancelling it if the client disconnects first (its queued job is
    then dropped before its batch runs)."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise GatewayError(499, "the client closed the connection", code="client_closed")
    return task.result()
