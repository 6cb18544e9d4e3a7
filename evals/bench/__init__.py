"""Benchmarks of the product, each behind one `run_*_bench` function that returns a
pydantic result (`.model_dump(mode="json")` is what `conclave bench ... --json` prints):

- `run_pool_bench` (`pool.py`, `PoolBenchResult`): the pool's grouped, load-once
  scheduling against loading a model per request, on tiny models;
- `run_routing_bench` (`routing.py`, `RoutingBenchResult`): recruitment throughput with
  LLM calls excluded, warm and cold;
- `run_gateway_bench` (`gateway.py`, `GatewayBenchResult`): the gateway's latency and
  requests/s on loopback, against vLLM's own server (load driver in `loopback.py`);
- `run_free_agents_bench` (`free_agents.py`, `FreeAgentsBenchResult`): the free-agent
  scenario replayed through the facade;
- `run_failover_bench` (`failover.py`, `FailoverBenchResult`): the routed model on the
  embedded default while one expert's actor is killed;
- `run_pools_bench` (`pools.py`, `PoolsBenchResult`, figures in `pools_report.py`):
  every strategy on pools of scripted experts with known accuracy per category, served
  by an OpenAI-compatible test server (`scripted.py`) through the remote backend.

The MoE kernel's benchmark stays with the kernels (`kernels/bench.py`). Names load on
first use, so importing this package imports no benchmark (nor Ray, vLLM or torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evals.bench.failover import FailoverBenchResult, run_failover_bench
    from evals.bench.free_agents import FreeAgentsBenchResult, run_free_agents_bench
    from evals.bench.gateway import GatewayBenchResult, run_gateway_bench
    from evals.bench.pool import PoolBenchResult, run_pool_bench
    from evals.bench.pools import run_pools_bench
    from evals.bench.pools_report import PoolsBenchResult
    from evals.bench.routing import RoutingBenchResult, run_routing_bench

_LAZY = {
    "run_pool_bench": "evals.bench.pool",
    "PoolBenchResult": "evals.bench.pool",
    "run_routing_bench": "evals.bench.routing",
    "RoutingBenchResult": "evals.bench.routing",
    "run_gateway_bench": "evals.bench.gateway",
    "GatewayBenchResult": "evals.bench.gateway",
    "run_failover_bench": "evals.bench.failover",
    "FailoverBenchResult": "evals.bench.failover",
    "run_free_agents_bench": "evals.bench.free_agents",
    "FreeAgentsBenchResult": "evals.bench.free_agents",
    "run_pools_bench": "evals.bench.pools",
    "PoolsBenchResult": "evals.bench.pools_report",
}

__all__ = [
    "FailoverBenchResult",
    "FreeAgentsBenchResult",
    "GatewayBenchResult",
    "PoolBenchResult",
    "PoolsBenchResult",
    "RoutingBenchResult",
    "run_failover_bench",
    "run_free_agents_bench",
    "run_gateway_bench",
    "run_pool_bench",
    "run_pools_bench",
    "run_routing_bench",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
