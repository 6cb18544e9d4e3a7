"""What every route shares, in one place: the facade, the settings, the batcher, the
metrics (a `Gateway` on `app.state.gateway`, handed to routes by the `Served` dependency).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from orchestrator.config import GatewaySettings, Role
from orchestrator.gateway.batching import MicroBatcher
from orchestrator.gateway.errors import GatewayError
from orchestrator.gateway.metrics import GatewayMetrics

if TYPE_CHECKING:
    from agents.free_agents import FreeAgentMonitor
    from orchestrator.conclave import Conclave
    from orchestrator.protocol import ChatRequest

log = logging.getLogger(__name__)

#: The routed ensemble's model name; every other model is an expert's.
ENSEMBLE = "conclave"


@dataclass
class Gateway:
    """One app's shared state. `ensemble=False` serves the experts by name only."""

    conclave: Conclave
    settings: GatewaySettings
    ensemble: bool
    batcher: MicroBatcher
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    #: the models served, as GET /v1/models lists them: the ensemble, then the experts
    served: list[str] = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.conclave.config.pool.experts
        experts = sorted({e.name for e in cfg if Role.EXPERT in e.roles})
        self.served = [*([ENSEMBLE] if self.ensemble else []), *experts]

    def streams_live(self, model: str) -> bool:
        """Whether `model` streams token by token: an expert loaded on an engine that
        batches continuously (while loading, it answers in one piece through a batch)."""
        return self.batcher.continuous(model)

    def check_routing(self) -> None:
        """Raise unless the routed ensemble can answer now (404 off, 503 no profile)."""
        if not self.ensemble:
            raise GatewayError(
                404,
                "this gateway serves experts by name only (started with --passthrough-only)",
                "not_found_error",
                "routing_off",
            )
        if self.conclave.state is None:
            raise GatewayError(
                503, "no routing profile loaded yet", "service_unavailable", retry_after=5
            )

    async def lane(self, body: ChatRequest) -> str:
        """The routed request's batching lane (`Conclave.lanes`), planned in a gateway
        thread; '' (the one shared lane) should planning fail: the batch then says why."""
        from orchestrator.gateway.completions import ensemble_item, question

        def plan() -> str:
            item = ensemble_item(self.conclave, question(body), body.seed, body.sampling())
            return self.conclave.lanes([item])[0]

        try:
            return await asyncio.get_running_loop().run_in_executor(self.batcher.threads, plan)
        except Exception as exc:
            log.debug("no lane for a routed request (%s: %s)", type(exc).__name__, exc)
            return ""

    def monitor(self) -> FreeAgentMonitor:
        """The free-agent monitor (404 when it is off)."""
        if self.conclave.monitor is None:
            raise GatewayError(
                404,
                "the free-agent monitor is off: name free agents in the config's "
                "free_agents section (or set free_agents.enabled)",
                "not_found_error",
                "monitor_off",
            )
        monitor: FreeAgentMonitor = self.conclave.monitor
        return monitor


async def _gateway(request: Request) -> Gateway:
    # async: FastAPI would run a plain function in a thread, per request
    gateway: Gateway = request.app.state.gateway
    return gateway


#: A route's parameter for the app's shared state.
Served = Annotated[Gateway, Depends(_gateway)]
