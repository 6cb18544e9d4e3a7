"""The free-agent monitor: its agents and decisions, and feedback on answers."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query

from orchestrator.gateway.deps import Served
from orchestrator.gateway.errors import GatewayError
from orchestrator.protocol import FeedbackRequest, FeedbackResponse

router = APIRouter()


@router.get("/v1/agents")
async def agents(
    gw: Served,
    history: Annotated[int, Query(ge=0, le=10_000, description="Decisions to return.")] = 50,
    offset: Annotated[
        int | None,
        Query(ge=0, description="Page from the audit log's start: the first decision's index."),
    ] = None,
) -> dict[str, Any]:
    """The monitor's view: each agent's state, evidence and flags, and its decisions:
    the last `history` of them, or with `offset` a page of the whole audit log from its
    start (`next_offset` is the next page's, None after the last)."""
    mon = gw.monitor()
    log = await anyio.to_thread.run_sync(mon.log.read)
    start = max(len(log) - history, 0) if offset is None else min(offset, len(log))
    entries = log[start : start + history]
    end = start + len(entries)
    return {
        "agents": mon.status(),
        "history": [e.model_dump() for e in entries],
        "total": len(log),
        "offset": start,
        "next_offset": end if offset is not None and end < len(log) else None,
    }


@router.post("/v1/feedback")
async def feedback(body: FeedbackRequest, gw: Served) -> dict[str, Any]:
    """Grade an answer of a routed model by its response id: the experts' graded answers
    update the routing estimates (saved with the profile) and, with free agents, the
    monitor's rewards."""
    task = body.id.removeprefix("chatcmpl-")
    try:
        scored = await anyio.to_thread.run_sync(
            gw.conclave.feedback, task, body.correct, body.answer
        )
    except KeyError:
        raise GatewayError(
            404,
            f"no recent answer with id {body.id!r}: feedback takes the id of a "
            "'conclave' chat completion, within its last 10,000 answers",
            "not_found_error",
            "unknown_response",
            param="id",
        ) from None
    return FeedbackResponse(id=body.id, agents_scored=scored).model_dump()
