"""Per-expert metrics through `ray.util.metrics`: they appear in the Ray dashboard's
metrics view and in Ray's Prometheus export (as `ray_conclave_expert_*`).

Recorded by the pool: requests, errors (by error class), batch latency, prompt and
completion tokens, model loads and evictions, and the requests queued for each expert.
Without Ray in the process (fake backends, unit tests) nothing is exported. The same
figures are also kept in this process (`live()`): the gateway's `/v1/experts` and
`conclave experts list` show them. `PoolStats` counts the pool's own loads, evictions
and restarts over its lifetime.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.errors import RequestRejectedError
from workers.batch import GenerationResult

#: the error type of a request the engine refused as the client's to fix
REFUSED = RequestRejectedError.__name__

_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]


class ExpertStatus(BaseModel):
    """One expert, live: `GET /v1/experts`, `conclave experts list`, the SDK's experts()."""

    name: str
    loaded: bool = Field(description="Its model is loaded now.")
    requests: int = Field(description="Requests answered since the pool started.")
    errors: int = Field(description="Requests the expert failed (its fault or its engine's).")
    refused: int = Field(
        0,
        description="Requests it refused as the client's to fix (a prompt past its context): "
        "not counted as errors.",
    )
    tokens: int = Field(description="Prompt and completion tokens.")
    loads: int = Field(description="Model loads.")
    evictions: int = Field(description="Times its model was evicted to make room.")
    queued: int = Field(description="Requests queued for it now.")
    mean_batch_seconds: float | None = Field(description="Mean seconds per batch.")
    idle_seconds: float | None = Field(description="Seconds since its last batch.")
    dtype: str | None = Field(
        None,
        description="The dtype its loaded engine runs in, where the backend says (vLLM): "
        "float32 on a CPU without native bf16 where the config leaves it open.",
    )
    dtype_why: str | None = Field(None, description="Why it runs in that dtype.")
    down: str | None = Field(
        None,
        description="Why it is down now, if it is: its engine restarting, or it keeps "
        "failing (its model did not load, its endpoint does not answer) and is held down "
        "until it is tried again (pool.down_hold_s).",
    )


@dataclass
class PoolStats:
    """Counters over the pool's lifetime."""

    loads: int = 0
    load_failures: int = 0
    evictions: int = 0
    restarts: int = 0
    load_seconds: float = 0.0
    loads_by_expert: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "loads": self.loads,
            "load_failures": self.load_failures,
            "evictions": self.evictions,
            "restarts": self.restarts,
            "load_seconds": round(self.load_seconds, 3),
            "loads_by_expert": dict(self.loads_by_expert),
        }


@dataclass
class LiveCounts:
    """One expert's figures in this process since the pool started."""

    requests: int = 0
    errors: int = 0
    refused: int = 0
    batches: int = 0
    batch_seconds: float = 0.0
    tokens: int = 0
    loads: int = 0
    evictions: int = 0
    queued: int = 0
    last_used: float | None = None  # time.time() of its last batch

    def status(self, name: str, loaded: bool, down: str | None = None) -> ExpertStatus:
        return ExpertStatus(
            name=name,
            loaded=loaded,
            down=down,
            requests=self.requests,
            errors=self.errors,
            refused=self.refused,
            tokens=self.tokens,
            loads=self.loads,
            evictions=self.evictions,
            queued=self.queued,
            mean_batch_seconds=round(self.batch_seconds / self.batches, 4)
            if self.batches
            else None,
            idle_seconds=round(time.time() - self.last_used, 1) if self.last_used else None,
        )


class ExpertMetrics:
    def __init__(self) -> None:
        self._m: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._live: dict[str, LiveCounts] = defaultdict(LiveCounts)

    def live(self, expert: str, loaded: bool, down: str | None = None) -> ExpertStatus:
        with self._lock:
            return self._live[expert].status(expert, loaded, down)

    def _metrics(self) -> dict[str, Any] | None:
        ray = sys.modules.get("ray")  # never import Ray just to count
        if ray is None or not ray.is_initialized():
            return None
        with self._lock:
            if self._m is None:
                from ray.util.metrics import Counter, Gauge, Histogram

                tag = ("expert",)
                self._m = {
                    "requests": Counter("conclave_expert_requests", "Requests answered.", tag),
                    "errors": Counter(
                        "conclave_expert_errors", "Requests failed.", ("expert", "error")
                    ),
                    "latency": Histogram(
                        "conclave_expert_batch_seconds", "Seconds per batch.", _BOUNDARIES, tag
                    ),
                    "tokens": Counter("conclave_expert_tokens", "Tokens.", ("expert", "kind")),
                    "loads": Counter("conclave_expert_loads", "Model loads.", tag),
                    "evictions": Counter("conclave_expert_evictions", "Model evictions.", tag),
                    "queue": Gauge("conclave_expert_queue_depth", "Requests queued.", tag),
                }
            return self._m

    def batch(self, expert: str, results: Sequence[GenerationResult], seconds: float) -> None:
        prompt = sum(r.prompt_tokens for r in results)
        completion = sum(r.completion_tokens for r in results)
        failed = sum(r.error is not None for r in results)
        refused = sum(r.error is not None and r.error.type == REFUSED for r in results)
        with self._lock:
            live = self._live[expert]
            live.requests += len(results) - failed
            live.errors += failed - refused
            live.refused += refused
            live.batches += 1
            live.batch_seconds += seconds
            live.tokens += prompt + completion
            live.last_used = time.time()
        m = self._metrics()
        if m is None:
            return
        tags = {"expert": expert}
        ok = [r for r in results if r.ok]
        if ok:
            m["requests"].inc(len(ok), tags)
        for r in results:
            if r.error is not None:
                m["errors"].inc(1, {"expert": expert, "error": r.error.type})
        m["latency"].observe(seconds, tags)
        if prompt:
            m["tokens"].inc(prompt, {"expert": expert, "kind": "prompt"})
        if completion:
            m["tokens"].inc(completion, {"expert": expert, "kind": "completion"})

    def load(self, expert: str) -> None:
        with self._lock:
            self._live[expert].loads += 1
        if (m := self._metrics()) is not None:
            m["loads"].inc(1, {"expert": expert})

    def eviction(self, expert: str) -> None:
        with self._lock:
            self._live[expert].evictions += 1
        if (m := self._metrics()) is not None:
            m["evictions"].inc(1, {"expert": expert})

    def queued(self, expert: str, n: int) -> None:
        with self._lock:
            self._live[expert].queued = n
        if (m := self._metrics()) is not None:
            m["queue"].set(n, {"expert": expert})
