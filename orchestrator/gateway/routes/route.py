"""POST /v1/route: whom the served model's strategy would ask first, and why, without
asking (`Conclave.plan`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from orchestrator.gateway.completions import ensemble_item
from orchestrator.gateway.deps import Served
from orchestrator.protocol import RouteRequest

router = APIRouter()


@router.post("/v1/route")
async def route(body: RouteRequest, gw: Served) -> dict[str, Any]:
    gw.check_routing()
    item = ensemble_item(gw.conclave, body.question)
    plan = await asyncio.to_thread(lambda: gw.conclave.plan([item])[0])
    return plan.model_dump(by_alias=True)
