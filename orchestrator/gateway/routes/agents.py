"""The free-agent monitor: its agents and decisions, and feedback on answers."""

from __future__ import annotations

from typing import Any

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
    """Grade an answer of model 'conclave' by its response id: the agents that took
    part earn an accuracy sample."""
    mon = gw.monitor()
    try:
        scored = mon.feedback(body.id.removeprefix("chatcmpl-"), body.correct, body.answer)
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
