"""GET /v1/models: the routed ensemble (unless passthrough-only) and every expert."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from orchestrator.gateway.deps import Served
from orchestrator.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models")
async def models(gw: Served) -> dict[str, Any]:
    now = int(time.time())
    return ModelList(data=[ModelCard(id=n, created=now) for n in gw.served]).model_dump()
