"""The free-agent monitor: its agents and decisions, and feedback on answers."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter

from orchestrator.gateway.deps import Served
from orchestrator.gateway.errors import GatewayError
from orchestrator.protocol import FeedbackRequest, FeedbackResponse

router = APIRouter()


@router.get("/v1/agents")
async def agents(gw: Served, history: int = 50) -> dict[str, Any]:
    """The monitor's view: each agent's state and mean reward, and its last decisions."""
    mon = gw.monitor()
    entries = mon.log.read()[-max(0, min(history, 10_000)) :] if history > 0 else []
    return {"agents": mon.status(), "history": [e.model_dump() for e in entries]}


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
