"""GET /v1/experts: each expert's live status (what `conclave experts list` shows)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from orchestrator.gateway.deps import Served

router = APIRouter()


@router.get("/v1/experts")
async def expert_status(gw: Served) -> dict[str, Any]:
    """Live status of every expert in the pool (what `conclave experts list` shows)."""
    return {"object": "list", "data": [e.model_dump() for e in gw.conclave.pool.status()]}
