"""`conclave serve`: an OpenAI-compatible REST gateway over the facade.

    POST /v1/chat/completions   model "conclave" (routed ensemble) or an expert's name
    GET  /v1/models             the ensemble and every expert
    GET  /v1/experts            live status per expert: loaded, requests, errors, latency
    GET  /v1/agents             the free-agent monitor: agents, rewards, decisions
    POST /v1/feedback           grade an answer by its response id
    POST /v1/route              explain a routing decision without generating
    GET  /healthz /readyz       liveness; readiness once the pool can serve
    GET  /metrics               Prometheus text (request-level view)

Concurrent requests are micro-batched (`batching`): a request waits up to
`batch_window_ms` for others, then the batch goes to the facade (ensemble, through
`orchestrator.chat`) or the pool (passthrough) in one call, so vLLM batches them. The
queue is bounded: beyond `max_queue` waiting requests the gateway answers 429 with
Retry-After. Every error is OpenAI's error JSON with the right status (`errors`); no input
produces a 500. Streaming (`stream: true`, `streaming`) from a loaded vLLM expert sends the
answer token by token as its engine generates it; from the routed ensemble or other
engines, as OpenAI chunks once the batch it rode in has finished.

    create_app(conclave, settings, ensemble)   the app (`app`), routes in `routes/`
    prepare(config, ensemble=, data=)          the facade to serve: profiled, preloaded
    serve(config, ensemble=, data=, ray_serve=)   `conclave serve`: uvicorn or Ray Serve

The names load on first use, so importing the package costs no FastAPI, uvicorn or Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from orchestrator.config import GatewaySettings

if TYPE_CHECKING:
    from orchestrator.gateway.app import create_app
    from orchestrator.gateway.serving import prepare, serve

__all__ = ["GatewaySettings", "create_app", "prepare", "serve"]

_LAZY = {
    "create_app": "orchestrator.gateway.app",
    "prepare": "orchestrator.gateway.serving",
    "serve": "orchestrator.gateway.serving",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
