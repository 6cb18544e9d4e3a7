"""The one app builder: `create_app` assembles the gateway from its parts.

Shared state (`deps.Gateway`) on `app.state.gateway`; errors in OpenAI's shape
(`errors`); the key and body-limit checks (`middleware`); one router per resource
(`routes`). The lifespan opens the batcher and, on shutdown, lets it finish what it took.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from orchestrator.config import GatewaySettings
from orchestrator.gateway.batching import MicroBatcher
from orchestrator.gateway.completions import batch_runner
from orchestrator.gateway.deps import ENSEMBLE, Gateway
from orchestrator.gateway.errors import add_error_handlers
from orchestrator.gateway.metrics import GatewayMetrics
from orchestrator.gateway.middleware import BodyLimit, guard
from orchestrator.gateway.routes import agents, chat, experts, health, models, route

if TYPE_CHECKING:
    from orchestrator.conclave import Conclave

#: the logger of the access log (gateway.access_log), one line per request
ACCESS_LOG = "conclave.access"


def create_app(
    conclave: Conclave, settings: GatewaySettings | None = None, ensemble: bool = True
) -> FastAPI:
    """The FastAPI app serving `conclave` (a `Conclave` facade with its pool). With
    `ensemble=False` it serves the experts by name only and is ready without a profile."""
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()

    def continuous(key: str) -> bool:
        # asked per batch, not bound now: the facade creates its pool on first use
        return bool(conclave.pool.batches_continuously(key))

    batcher = MicroBatcher(batch_runner(conclave), settings, continuous, ensemble_key=ENSEMBLE)
    gateway = Gateway(conclave, settings, ensemble, batcher, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.closed = False  # (re)started: take jobs
        # what exists by now lives as long as the server: out of the collector's sight, a
        # full collection no longer walks it mid-request (as vLLM does for its engine)
        gc.collect()
        gc.freeze()
        yield
        await batcher.drain()  # graceful: in-flight batches finish

    app = FastAPI(
        title="Conclave gateway",
        version="1",
        description="OpenAI-compatible chat completions over routed expert LLMs.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.batcher = batcher
    app.state.metrics = metrics
    add_error_handlers(app)
    # added first, so it runs inside BodyLimit: a chunked body is capped before the checks
    access = logging.getLogger(ACCESS_LOG) if settings.access_log else None
    app.middleware("http")(guard(settings.keys(), settings.max_body_bytes, metrics, access))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, metrics=metrics)
    for resource in (health, models, experts, agents, route, chat):
        app.include_router(resource.router)
    return app
