"""The gateway's request-level Prometheus metrics (its own registry, served at /metrics).

The pool's per-expert metrics (`workers.metrics`) go to Ray's; these count what clients
see: requests by path and status, latency, tokens by model, the queue.
"""

from __future__ import annotations


class GatewayMetrics:
    """Requests by path, model and status, latency by path and model, tokens by model,
    queue depth."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "conclave_gateway_requests",
            "HTTP requests.",
            ["path", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "conclave_gateway_request_seconds",
            "Request latency (to the response's start: a stream's first piece).",
            ["path", "model"],
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.tokens_total = Counter(
            "conclave_gateway_tokens",
            "Tokens used by completions.",
            ["model"],
            registry=self.registry,
        )
        self.queue = Gauge(
            "conclave_gateway_queue_depth", "Requests waiting or running.", registry=self.registry
        )

    def observe(self, path: str, status: int, seconds: float, model: str = "") -> None:
        """One request: `model` is the served model a chat request named ('' for other
        requests and refused ones), so the label's values are the served models only."""
        known = path if path.startswith(("/v1/", "/healthz", "/readyz", "/metrics")) else "other"
        self.requests.labels(known, model, str(status)).inc()
        self.latency.labels(known, model).observe(seconds)

    def tokens(self, model: str, n: int) -> None:
        self.tokens_total.labels(model).inc(n)

    def render(self, depth: int) -> str:
        from prometheus_client import generate_latest

        self.queue.set(depth)
        return generate_latest(self.registry).decode()
