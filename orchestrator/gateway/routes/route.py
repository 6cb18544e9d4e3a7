"""POST /v1/route: which experts the routed ensemble would ask, and why, without asking."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter

from orchestrator.gateway.deps import Served
from orchestrator.protocol import RouteRequest
from orchestrator.types import Item

router = APIRouter()


@router.post("/v1/route")
async def route(body: RouteRequest, gw: Served) -> dict[str, Any]:
    gw.check_routing()
    item = Item(id=f"route-{uuid.uuid4().hex[:8]}", question=body.question)
    decision = await asyncio.to_thread(lambda: gw.conclave.route([item])[0])
    return decision.model_dump(by_alias=True)
