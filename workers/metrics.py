"""Per-expert metrics through `ray.util.metrics`: they appear in the Ray dashboard's
metrics view and in Ray's Prometheus export (as `ray_conclave_expert_*`).

Recorded by the pool: requests, errors (by error class), batch latency, prompt and
completion tokens, model loads and evictions, and the requests queued for each expert.
Without Ray in the process (fake backends, unit tests) every call is a no-op.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any

from workers.batch import GenerationResult

_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]


class ExpertMetrics:
    def __init__(self) -> None:
        self._m: dict[str, Any] | None = None
        self._lock = threading.Lock()

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
        prompt = sum(r.prompt_tokens for r in results)
        completion = sum(r.completion_tokens for r in results)
        if prompt:
            m["tokens"].inc(prompt, {"expert": expert, "kind": "prompt"})
        if completion:
            m["tokens"].inc(completion, {"expert": expert, "kind": "completion"})

    def load(self, expert: str) -> None:
        if (m := self._metrics()) is not None:
            m["loads"].inc(1, {"expert": expert})

    def eviction(self, expert: str) -> None:
        if (m := self._metrics()) is not None:
            m["evictions"].inc(1, {"expert": expert})

    def queued(self, expert: str, n: int) -> None:
        if (m := self._metrics()) is not None:
            m["queue"].set(n, {"expert": expert})
