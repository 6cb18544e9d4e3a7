"""Liveness, readiness and Prometheus metrics (a load balancer's and a scraper's view)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from orchestrator.gateway.deps import Served

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(gw: Served) -> JSONResponse:
    # 503 until every model served can answer: not while shutting down, nor while the
    # routed ensemble has no profile (a load balancer then sends traffic elsewhere)
    if gw.batcher.closed:
        why = "shutting down"
    elif gw.ensemble and gw.conclave.state is None:
        why = "no routing profile loaded yet"
    else:
        why = "ready"
    ready = why == "ready"
    return JSONResponse({"ready": ready, "status": why}, status_code=200 if ready else 503)


@router.get("/metrics")
async def prometheus(gw: Served) -> PlainTextResponse:
    return PlainTextResponse(gw.metrics.render(gw.batcher.depth), media_type="text/plain")
